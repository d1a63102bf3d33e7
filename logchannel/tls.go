package logchannel

// Mutual TLS on the logging channel: who may be a side of a pair, and the
// certificates that say so.
//
// A pair has a CA of its own. Each side holds a certificate from it that
// names the protected VM (a URI SAN "ftvm://vm/<escaped VM id>") and is
// good for both TLS client and server: after a failover the backup's host
// becomes the primary and dials a new backup with the same certificate, so
// a certificate names the VM, not the role. Each side checks that the
// peer's certificate chains to the pair's CA and names this side's VM id;
// host names are not checked, since the pair's CA issues certificates for
// nothing else. The handshake then binds each Hello (role, VM id,
// generation, image, config) to the TLS session with exported keying
// material, so a Hello is worth nothing outside the session it was sent in.

import (
	"crypto/ecdsa"
	"crypto/elliptic"
	"crypto/rand"
	"crypto/tls"
	"crypto/x509"
	"crypto/x509/pkix"
	"encoding/pem"
	"errors"
	"fmt"
	"io"
	"math/big"
	"net"
	"net/url"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"
)

// Credentials are one side's identity for the channel's mutual TLS.
type Credentials struct {
	// Certificate is this side's certificate (issued by the pair's CA for
	// the VM id) and its private key.
	Certificate tls.Certificate
	// CA holds the pair's CA certificate: the only root the peer's
	// certificate may chain to.
	CA *x509.CertPool
}

// LoadCredentials reads a side's PEM certificate, its key and the pair's
// CA certificate.
func LoadCredentials(certFile, keyFile, caFile string) (*Credentials, error) {
	cert, err := tls.LoadX509KeyPair(certFile, keyFile)
	if err != nil {
		return nil, fmt.Errorf("logchannel: loading the TLS certificate %s and key %s: %w", certFile, keyFile, err)
	}
	caPEM, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("logchannel: loading the pair's CA: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(caPEM) {
		return nil, fmt.Errorf("logchannel: %s holds no PEM certificate", caFile)
	}
	return &Credentials{Certificate: cert, CA: pool}, nil
}

// ErrUnauthenticated is matched by errors.Is for every *AuthError.
var ErrUnauthenticated = errors.New("logchannel: peer not authenticated")

// AuthError is a session that ended in the TLS handshake: a side did not
// prove with a certificate from the pair's CA, naming this VM, that it
// belongs to the pair, or the peer runs without TLS. errors.Is matches
// both ErrUnauthenticated and ErrRefused: retrying with the same
// certificates cannot succeed.
type AuthError struct {
	// Peer is the peer's address.
	Peer string
	// Reason says what was wrong ("the peer's certificate is for VM
	// "db-7", not "web-1"").
	Reason string
	// ByPeer is true when the peer refused this side's certificate.
	ByPeer bool
	// Err is the TLS error, if any.
	Err error
}

func (e *AuthError) Is(target error) bool {
	return target == ErrUnauthenticated || target == ErrRefused
}
func (e *AuthError) Unwrap() error { return e.Err }

func (e *AuthError) Error() string {
	if e.ByPeer {
		return fmt.Sprintf("logchannel: %s refused this side's TLS certificate: %s", e.Peer, e.Reason)
	}
	return fmt.Sprintf("logchannel: TLS with %s failed: %s", e.Peer, e.Reason)
}

// certIdentityURI is the URI SAN that makes a certificate good for vmID.
func certIdentityURI(vmID string) *url.URL {
	return &url.URL{Scheme: "ftvm", Host: "vm", Path: "/" + vmID}
}

// certVMIDs returns the VM ids a certificate is good for.
func certVMIDs(c *x509.Certificate) []string {
	var ids []string
	for _, u := range c.URIs {
		if u.Scheme == "ftvm" && u.Host == "vm" && strings.HasPrefix(u.Path, "/") {
			ids = append(ids, u.Path[1:])
		}
	}
	return ids
}

// peerCertError is what verifyPeer returns, to tell it from other TLS
// failures.
type peerCertError struct{ reason string }

func (e *peerCertError) Error() string { return e.reason }

// verifyPeer checks the peer's certificate chain against the pair's CA and
// its identity against vmID. The TLS library's own verification is off: it
// would check a host name, which means nothing here.
func verifyPeer(ca *x509.CertPool, vmID string, usage x509.ExtKeyUsage) func(tls.ConnectionState) error {
	return func(cs tls.ConnectionState) error {
		if len(cs.PeerCertificates) == 0 {
			return &peerCertError{"the peer presented no certificate"}
		}
		leaf := cs.PeerCertificates[0]
		opts := x509.VerifyOptions{Roots: ca, Intermediates: x509.NewCertPool(), KeyUsages: []x509.ExtKeyUsage{usage}}
		for _, c := range cs.PeerCertificates[1:] {
			opts.Intermediates.AddCert(c)
		}
		if _, err := leaf.Verify(opts); err != nil {
			return &peerCertError{fmt.Sprintf("the peer's certificate (%q) is not from this pair's CA: %v", leaf.Subject.CommonName, err)}
		}
		if ids := certVMIDs(leaf); !slices.Contains(ids, vmID) {
			return &peerCertError{fmt.Sprintf("the peer's certificate (%q) is for VM %q, not %q", leaf.Subject.CommonName, strings.Join(ids, ","), vmID)}
		}
		return nil
	}
}

// tlsConfig is the TLS configuration of side for vmID.
func tlsConfig(creds *Credentials, vmID string, side role) *tls.Config {
	c := &tls.Config{
		MinVersion:   tls.VersionTLS13,
		Certificates: []tls.Certificate{creds.Certificate},
	}
	if side == rolePrimary {
		c.InsecureSkipVerify = true // verifyPeer checks the chain; no host names
		c.ServerName = "ftvm"
		c.VerifyConnection = verifyPeer(creds.CA, vmID, x509.ExtKeyUsageServerAuth)
	} else {
		c.ClientAuth = tls.RequireAnyClientCert // verifyPeer checks it
		c.VerifyConnection = verifyPeer(creds.CA, vmID, x509.ExtKeyUsageClientAuth)
	}
	return c
}

// secureConn is a TLS connection whose Close closes the TCP connection at
// once, without a close_notify: a Close must never wait on a peer that
// stopped reading, and the channel's own messages say when a session ends.
type secureConn struct{ *tls.Conn }

func (c secureConn) Close() error { return c.NetConn().Close() }

// startTLS runs the TLS handshake of side on conn (deadline already set,
// timeout its length, for messages) for the VM vmID and returns the
// secured connection.
func startTLS(conn net.Conn, creds *Credentials, vmID string, side role, timeout time.Duration) (net.Conn, error) {
	peer := conn.RemoteAddr().String()
	var tc *tls.Conn
	if side == rolePrimary {
		tc = tls.Client(conn, tlsConfig(creds, vmID, side))
	} else {
		tc = tls.Server(conn, tlsConfig(creds, vmID, side))
	}
	err := tc.Handshake()
	if err == nil {
		return secureConn{tc}, nil
	}
	if side == roleBackup {
		lingerAfterRefusal(conn)
	}
	var pce *peerCertError
	var rhe tls.RecordHeaderError
	switch {
	case errors.As(err, &pce):
		return nil, &AuthError{Peer: peer, Reason: pce.reason, Err: err}
	case isRemoteAlert(err):
		return nil, &AuthError{Peer: peer, Reason: fmt.Sprintf("it sent the TLS alert %q", alertText(err)), ByPeer: true, Err: err}
	case errors.As(err, &rhe):
		hdr := rhe.RecordHeader[:]
		if m := min(len(hdr), len(Magic)); string(hdr[:m]) == Magic[:m] {
			return nil, &AuthError{Peer: peer, Reason: "the peer runs the logging channel in clear (--insecure-no-tls) but this side requires TLS", Err: err}
		}
		return nil, notFTVM(peer, hdr)
	}
	var ne net.Error
	switch {
	case errors.As(err, &ne) && ne.Timeout():
		return nil, fmt.Errorf("logchannel: TLS handshake with %s: not done within %v (is it an ftvm logging channel?): %w", peer, timeout, err)
	case errors.Is(err, io.EOF), errors.Is(err, io.ErrUnexpectedEOF):
		return nil, fmt.Errorf("logchannel: TLS handshake with %s: the connection ended before the TLS handshake was done: %w", peer, err)
	}
	// Anything else is the peer's TLS falling short of this side's: no
	// certificate, an old version, no common cipher.
	return nil, &AuthError{Peer: peer, Reason: strings.TrimPrefix(err.Error(), "tls: "), Err: err}
}

// lingerAfterRefusal lets a TLS alert reach the peer before the
// connection closes: the primary learns that its certificate was refused
// only when it reads, after it has sent its hello (TLS 1.3 ends the
// client's handshake before the server checks the client's certificate),
// and a close with that hello unread would reset the connection and drop
// the alert. It stops sending, then reads until the peer closes, for at
// most 250 ms.
func lingerAfterRefusal(conn net.Conn) {
	tc, ok := conn.(*net.TCPConn)
	if !ok {
		return
	}
	tc.CloseWrite()
	tc.SetReadDeadline(time.Now().Add(250 * time.Millisecond))
	var buf [4096]byte
	for {
		if _, err := tc.Read(buf[:]); err != nil {
			return
		}
	}
}

// isRemoteAlert reports whether err is a TLS alert the peer sent.
func isRemoteAlert(err error) bool {
	var oe *net.OpError
	return errors.As(err, &oe) && oe.Op == "remote error"
}

func alertText(err error) string {
	var oe *net.OpError
	if errors.As(err, &oe) && oe.Err != nil {
		return oe.Err.Error()
	}
	return err.Error()
}

// bindingLabel is the TLS exporter label of the hello binding (RFC 8446
// 7.5); the context is the hello's fields, so the binding is a MAC of the
// hello under a key only this session's two ends know.
const bindingLabel = "EXPORTER-ftvm-logchannel-hello"

// bindingLen is the size of a hello's session binding.
const bindingLen = 32

// helloBinding returns the binding of the hello fields f to conn's TLS
// session, or nil if conn is not TLS.
func helloBinding(conn net.Conn, f []byte) ([]byte, error) {
	sc, ok := conn.(secureConn)
	if !ok {
		return nil, nil
	}
	cs := sc.ConnectionState()
	return cs.ExportKeyingMaterial(bindingLabel, f, bindingLen)
}

// A CA issues the certificates of a pair's two sides.
type CA struct {
	cert *x509.Certificate
	key  *ecdsa.PrivateKey
	// CertPEM is the CA's certificate, for LoadCredentials' caFile.
	CertPEM []byte
}

// certValidity is how long the certificates NewCA and Issue make are good
// for. A year: the CA serves one VM's pairings; renewing means re-running
// `ftvm certs`.
const certValidity = 365 * 24 * time.Hour

// NewCA makes a new CA named name (its certificate's common name).
func NewCA(name string) (*CA, error) {
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, fmt.Errorf("logchannel: CA key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber:          serial(),
		Subject:               pkix.Name{CommonName: name, Organization: []string{"ftvm pair CA"}},
		NotBefore:             now.Add(-time.Hour),
		NotAfter:              now.Add(certValidity),
		KeyUsage:              x509.KeyUsageCertSign | x509.KeyUsageCRLSign,
		BasicConstraintsValid: true,
		IsCA:                  true,
		MaxPathLenZero:        true,
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, tmpl, &key.PublicKey, key)
	if err != nil {
		return nil, fmt.Errorf("logchannel: CA certificate: %w", err)
	}
	cert, err := x509.ParseCertificate(der)
	if err != nil {
		return nil, err
	}
	return &CA{cert: cert, key: key, CertPEM: pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der})}, nil
}

func serial() *big.Int {
	n, err := rand.Int(rand.Reader, new(big.Int).Lsh(big.NewInt(1), 127))
	if err != nil {
		panic(err) // crypto/rand does not fail
	}
	return n
}

// Issue makes a certificate and key (PEM) for one side of the pair that
// protects vmID; host names it (the common name) for people reading logs.
func (ca *CA) Issue(vmID, host string) (certPEM, keyPEM []byte, err error) {
	if vmID == "" || len(vmID) > MaxVMIDLen {
		return nil, nil, fmt.Errorf("logchannel: a certificate needs a VM id of 1 to %d bytes, not %q", MaxVMIDLen, vmID)
	}
	key, err := ecdsa.GenerateKey(elliptic.P256(), rand.Reader)
	if err != nil {
		return nil, nil, fmt.Errorf("logchannel: key: %w", err)
	}
	now := time.Now()
	tmpl := &x509.Certificate{
		SerialNumber: serial(),
		Subject:      pkix.Name{CommonName: host + " for VM " + vmID, Organization: []string{"ftvm pair"}},
		NotBefore:    now.Add(-time.Hour),
		NotAfter:     now.Add(certValidity),
		KeyUsage:     x509.KeyUsageDigitalSignature,
		ExtKeyUsage:  []x509.ExtKeyUsage{x509.ExtKeyUsageServerAuth, x509.ExtKeyUsageClientAuth},
		URIs:         []*url.URL{certIdentityURI(vmID)},
	}
	der, err := x509.CreateCertificate(rand.Reader, tmpl, ca.cert, &key.PublicKey, ca.key)
	if err != nil {
		return nil, nil, fmt.Errorf("logchannel: certificate: %w", err)
	}
	kder, err := x509.MarshalPKCS8PrivateKey(key)
	if err != nil {
		return nil, nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "CERTIFICATE", Bytes: der}),
		pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: kder}), nil
}

// Credentials issues a certificate for vmID and returns it as the
// Credentials of one side, without touching a file.
func (ca *CA) Credentials(vmID, host string) (*Credentials, error) {
	certPEM, keyPEM, err := ca.Issue(vmID, host)
	if err != nil {
		return nil, err
	}
	cert, err := tls.X509KeyPair(certPEM, keyPEM)
	if err != nil {
		return nil, err
	}
	pool := x509.NewCertPool()
	pool.AddCert(ca.cert)
	return &Credentials{Certificate: cert, CA: pool}, nil
}

// KeyPEM is the CA's private key, PEM-encoded.
func (ca *CA) KeyPEM() ([]byte, error) {
	der, err := x509.MarshalPKCS8PrivateKey(ca.key)
	if err != nil {
		return nil, err
	}
	return pem.EncodeToMemory(&pem.Block{Type: "PRIVATE KEY", Bytes: der}), nil
}

// CredentialFiles are where one side's credentials are.
type CredentialFiles struct{ Cert, Key, CA string }

// PairFiles names the files WritePairCredentials writes for host in dir.
func PairFiles(dir, host string) CredentialFiles {
	return CredentialFiles{
		Cert: filepath.Join(dir, host+".crt"),
		Key:  filepath.Join(dir, host+".key"),
		CA:   filepath.Join(dir, "ca.crt"),
	}
}

// Load reads the credentials the files hold.
func (f CredentialFiles) Load() (*Credentials, error) { return LoadCredentials(f.Cert, f.Key, f.CA) }

// WritePairCredentials makes a new CA for the pair that protects vmID and
// a certificate for each host, and writes them to dir: ca.crt and ca.key
// (to issue more later), <host>.crt and <host>.key. Keys are mode 0600.
// Every file is written to a temporary name and renamed, so none is ever
// half-written; an existing file of the same name is replaced.
func WritePairCredentials(dir, vmID string, hosts ...string) error {
	for _, h := range hosts {
		if h == "" || h == "ca" || strings.ContainsAny(h, `/\`) || h != filepath.Clean(h) {
			return fmt.Errorf("logchannel: %q cannot name a host's certificate file", h)
		}
	}
	ca, err := NewCA("ftvm CA for VM " + vmID)
	if err != nil {
		return err
	}
	caKey, err := ca.KeyPEM()
	if err != nil {
		return err
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return fmt.Errorf("logchannel: %w", err)
	}
	if err := writeFileAtomic(filepath.Join(dir, "ca.key"), caKey, 0o600); err != nil {
		return err
	}
	if err := writeFileAtomic(filepath.Join(dir, "ca.crt"), ca.CertPEM, 0o644); err != nil {
		return err
	}
	for _, h := range hosts {
		certPEM, keyPEM, err := ca.Issue(vmID, h)
		if err != nil {
			return err
		}
		f := PairFiles(dir, h)
		if err := writeFileAtomic(f.Key, keyPEM, 0o600); err != nil {
			return err
		}
		if err := writeFileAtomic(f.Cert, certPEM, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// writeFileAtomic writes data to a temporary file beside name, created
// with perm, syncs it and renames it to name.
func writeFileAtomic(name string, data []byte, perm os.FileMode) error {
	f, err := os.CreateTemp(filepath.Dir(name), "."+filepath.Base(name)+".tmp-*")
	if err != nil {
		return fmt.Errorf("logchannel: %w", err)
	}
	tmp := f.Name()
	err = f.Chmod(perm)
	if err == nil {
		_, err = f.Write(data)
	}
	if err == nil {
		err = f.Sync()
	}
	if cerr := f.Close(); err == nil {
		err = cerr
	}
	if err == nil {
		err = os.Rename(tmp, name)
	}
	if err != nil {
		os.Remove(tmp)
		return fmt.Errorf("logchannel: writing %s: %w", name, err)
	}
	return nil
}

// NewPairCredentials makes a throwaway CA for the pair that protects vmID
// and returns its two sides' credentials, in memory: for a pair within
// one process (tests, benchmarks).
func NewPairCredentials(vmID string) (primary, backup *Credentials, err error) {
	ca, err := NewCA("throwaway ftvm CA for VM " + vmID)
	if err != nil {
		return nil, nil, err
	}
	if primary, err = ca.Credentials(vmID, "primary"); err != nil {
		return nil, nil, err
	}
	if backup, err = ca.Credentials(vmID, "backup"); err != nil {
		return nil, nil, err
	}
	return primary, backup, nil
}
