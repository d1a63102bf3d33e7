package bench

import (
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	s3types "github.com/aws/aws-sdk-go-v2/service/s3/types"
	"github.com/ftvm/ftvm/bench/hosts"
)

// s3Server is a versitygw (posix backend) on a fixed loopback port, which
// the fault campaign stops and starts again on the same port and storage:
// the arbiter's storage going away for a while.
type s3Server struct {
	bin, root, addr string
	// net and host, if net is not nil: the server runs on that host and is
	// reached there (addr is the host's).
	net    *hosts.Net
	host   string
	cmd    *exec.Cmd
	exited chan struct{}
}

const (
	s3Bucket = "ftvm-chaos"
	s3Access = "ftvm-chaos-access"
	s3Secret = "ftvm-chaos-secret"
)

// findVersityGW looks in $VERSITYGW, then root/.tools/bin (what
// .ci/install-s3.sh installs), then PATH.
func findVersityGW(root string) (string, error) {
	if p := os.Getenv("VERSITYGW"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return "", fmt.Errorf("$VERSITYGW=%s: %w", p, err)
		}
		return p, nil
	}
	if p := filepath.Join(root, ".tools", "bin", "versitygw"); fileExists(p) {
		return p, nil
	}
	if p, err := exec.LookPath("versitygw"); err == nil {
		return p, nil
	}
	return "", errors.New("versitygw not found ($VERSITYGW, .tools/bin, PATH): run .ci/install-s3.sh")
}

func fileExists(p string) bool { _, err := os.Stat(p); return err == nil }

// startS3Server starts versitygw with its storage under dir and makes the
// bucket: on loopback, or if n is not nil on n's host at addr.
func startS3Server(ctx context.Context, bin, dir string, n *hosts.Net, host, addr string) (*s3Server, error) {
	root := filepath.Join(dir, "s3")
	if err := os.MkdirAll(root, 0o755); err != nil {
		return nil, err
	}
	if n == nil {
		var err error
		if addr, err = freeLoopbackAddr(); err != nil {
			return nil, err
		}
	}
	s := &s3Server{bin: bin, root: root, addr: addr, net: n, host: host}
	if err := s.start(ctx); err != nil {
		return nil, err
	}
	return s, nil
}

func (s *s3Server) endpoint() string { return "http://" + s.addr }

// url is the arbiter URL of the bucket under prefix.
func (s *s3Server) url(prefix string) string {
	return "s3://" + s3Bucket + "/" + prefix + "?endpoint=" + s.endpoint() + "&region=us-east-1"
}

// env is what an ftvm process needs to reach the server.
func (s *s3Server) env() []string {
	return append(os.Environ(), "AWS_ACCESS_KEY_ID="+s3Access, "AWS_SECRET_ACCESS_KEY="+s3Secret, "AWS_EC2_METADATA_DISABLED=true")
}

// start runs the server and waits until it answers (creating the bucket
// if it is not there).
func (s *s3Server) start(ctx context.Context) error {
	args := []string{"--access", s3Access, "--secret", s3Secret, "--port", s.addr, "--quiet", "posix", s.root}
	cmd := exec.Command(s.bin, args...)
	if s.net != nil {
		cmd = s.net.Command(s.host, s.bin, args...)
	}
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return fmt.Errorf("starting versitygw: %w", err)
	}
	s.cmd, s.exited = cmd, make(chan struct{})
	go func() { cmd.Wait(); close(s.exited) }()
	client := s3.New(s3.Options{Region: "us-east-1", BaseEndpoint: aws.String(s.endpoint()), UsePathStyle: true,
		Credentials: credentials.NewStaticCredentialsProvider(s3Access, s3Secret, ""),
		HTTPClient:  &http.Client{Transport: &http.Transport{DialContext: s.dial}}})
	deadline := time.Now().Add(time.Minute)
	for {
		_, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(s3Bucket)})
		if err == nil || isBucketThere(err) {
			return nil
		}
		select {
		case <-s.exited:
			return fmt.Errorf("versitygw on %s exited at start: %v", s.addr, err)
		default:
		}
		if time.Now().After(deadline) {
			s.stop()
			return fmt.Errorf("versitygw on %s did not answer within a minute: %w", s.addr, err)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

func isBucketThere(err error) bool {
	var owned *s3types.BucketAlreadyOwnedByYou
	var exists *s3types.BucketAlreadyExists
	return errors.As(err, &owned) || errors.As(err, &exists)
}

// stop kills the server (kill -9: storage that vanishes, not one that
// shuts down politely) and waits until its port is free.
func (s *s3Server) stop() {
	if s.cmd == nil {
		return
	}
	s.cmd.Process.Kill()
	<-s.exited
	s.cmd = nil
	for i := 0; i < 100; i++ {
		c, err := s.dial(context.Background(), "tcp", s.addr)
		if err != nil {
			return
		}
		c.Close()
		time.Sleep(10 * time.Millisecond)
	}
}

// dial connects to the server from where it is reached: loopback, or its
// host's namespace.
func (s *s3Server) dial(ctx context.Context, network, addr string) (net.Conn, error) {
	var d net.Dialer
	if s.net == nil {
		return d.DialContext(ctx, network, addr)
	}
	var c net.Conn
	err := s.net.Do(s.host, func() (err error) {
		c, err = d.DialContext(ctx, network, addr)
		return err
	})
	return c, err
}
