/* lwIP's configuration for ftvm guests: NO_SYS (the raw, callback API; no threads, no
 * sockets, no netconn), IPv4, ARP, ICMP echo and TCP over one Ethernet netif (port.c).
 * Everything lwIP allocates comes from static arrays in .bss (lwIP's own heap and pools).
 *
 * Determinism: lwIP's only inputs are frames, the clock (sys_now) and LWIP_RAND/the ISN
 * hook (arch/cc.h), all of which come from VMM exits that are logged and replayed. */
#ifndef FTVM_LWIPOPTS_H
#define FTVM_LWIPOPTS_H

#define NO_SYS 1
#define SYS_LIGHTWEIGHT_PROT 0
#define LWIP_SOCKET 0
#define LWIP_NETCONN 0
#define LWIP_TIMERS 1
#define LWIP_SINGLE_NETIF 1
#define LWIP_NETIF_API 0

#define LWIP_IPV4 1
#define LWIP_IPV6 0
#define LWIP_ARP 1
#define LWIP_ETHERNET 1
#define LWIP_ICMP 1
#define LWIP_RAW 0
#define LWIP_UDP 0
#define LWIP_TCP 1
#define LWIP_DHCP 0
#define LWIP_AUTOIP 0
#define LWIP_IGMP 0
#define LWIP_DNS 0
#define IP_REASSEMBLY 0
#define IP_FRAG 0
#define LWIP_STATS 0
#define LWIP_ALTCP 0

/* Memory: lwIP's heap (transmit segments' data) and pools. */
#define MEM_ALIGNMENT 8
#define MEM_SIZE (4 * 1024 * 1024)
#define MEMP_NUM_PBUF 256
#define MEMP_NUM_TCP_PCB 256
#define MEMP_NUM_TCP_PCB_LISTEN 4
#define MEMP_NUM_TCP_SEG 2048
#define MEMP_NUM_ARP_QUEUE 64
#define PBUF_POOL_SIZE 1024
#define ARP_TABLE_SIZE 64
#define ARP_QUEUEING 1

/* TCP. A window of 32 KiB per connection and as much send buffer. */
#define TCP_MSS 1460
#define TCP_WND (22 * TCP_MSS)
#define TCP_SND_BUF (22 * TCP_MSS)
#define TCP_SND_QUEUELEN (4 * TCP_SND_BUF / TCP_MSS)
#define TCP_LISTEN_BACKLOG 1
#define TCP_DEFAULT_LISTEN_BACKLOG 128
#define LWIP_TCP_KEEPALIVE 0
#define TCP_QUEUE_OOSEQ 1
#define LWIP_TCP_SACK_OUT 0

/* The initial sequence number of each connection: random bits from the VMM (rdrand). */
#define LWIP_HOOK_TCP_ISN(local_ip, local_port, remote_ip, remote_port) \
	((void)(local_ip), (void)(local_port), (void)(remote_ip), (void)(remote_port), \
	 ftvm_lwip_rand())

/* Checksums in software, both ways (the VMM's NIC offloads nothing). */
#define CHECKSUM_GEN_IP 1
#define CHECKSUM_GEN_TCP 1
#define CHECKSUM_CHECK_IP 1
#define CHECKSUM_CHECK_TCP 1

#define LWIP_NETIF_STATUS_CALLBACK 0
#define LWIP_NETIF_LINK_CALLBACK 0

#endif
