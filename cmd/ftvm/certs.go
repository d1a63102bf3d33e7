package main

import (
	"fmt"
	"os"
	"strings"

	"github.com/ftvm/ftvm/logchannel"
)

// cmdCerts makes a CA and the certificates of a pair's two hosts, for
// `ftvm primary/backup --tls-cert --tls-key --tls-ca`.
func cmdCerts(args []string) int {
	fs := newFlagSet("certs", "--dir DIR --vm-id ID [--hosts A,B]")
	dir := fs.String("dir", "", "write the CA and the certificates to `DIR` (created if missing)")
	vmID := fs.String("vm-id", "", "the VM the pair protects: its certificates are good for this VM only")
	hosts := fs.String("hosts", "primary,backup", "comma-separated names of the pair's hosts, one certificate each (either may be primary or backup)")
	if err := fs.Parse(args); err != nil {
		return exitUsage
	}
	if *dir == "" || *vmID == "" || fs.NArg() != 0 {
		fmt.Fprintln(os.Stderr, "ftvm certs: --dir and --vm-id are required, and nothing else")
		return exitUsage
	}
	names := strings.Split(*hosts, ",")
	if err := logchannel.WritePairCredentials(*dir, *vmID, names...); err != nil {
		fmt.Fprintf(os.Stderr, "ftvm certs: %v\n", err)
		return exitUsage
	}
	fmt.Printf("ftvm certs: a new CA and certificates for VM %q in %s:\n", *vmID, *dir)
	fmt.Printf("  ca.crt          the pair's CA: --tls-ca on both hosts\n")
	fmt.Printf("  ca.key          the CA's key: keep it off both hosts; it issues more certificates\n")
	for _, h := range names {
		f := logchannel.PairFiles(*dir, h)
		fmt.Printf("  on host %s: --tls-cert %s --tls-key %s --tls-ca %s\n", h, f.Cert, f.Key, f.CA)
	}
	return 0
}
