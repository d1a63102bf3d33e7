package splitbrain

import (
	"bytes"
	"context"
	"debug/buildinfo"
	"errors"
	"fmt"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// The S3 tests run against a real versitygw (posix backend) on 127.0.0.1,
// because the property under test, that If-None-Match: * PUTs are atomic, is
// exactly what fakes get wrong. One server is shared by the package's tests;
// each arbiter gets its own key prefix, which is as good as fresh storage.

const (
	testBucket    = "splitbrain-test"
	testAccessKey = "splitbrain-test-access"
	testSecretKey = "splitbrain-test-secret"
	// Versions before this let concurrent conditional PUTs all succeed.
	minVersityGW = "v1.8.0"
)

var versityGW struct {
	once     sync.Once
	endpoint string
	err      error
	cmd      *exec.Cmd
	exited   chan struct{}
	dir      string
}

func TestMain(m *testing.M) {
	code := m.Run()
	stopVersityGW()
	os.Exit(code)
}

// needVersityGW returns the endpoint of the shared server, starting it on
// first use. Without the binary it fails under CI=true and skips otherwise.
func needVersityGW(t *testing.T) string {
	t.Helper()
	bin := findVersityGW()
	if bin == "" {
		msg := "versitygw not found ($VERSITYGW, <repo>/.tools/bin, PATH): run .ci/install-s3.sh"
		if p := os.Getenv("VERSITYGW"); p != "" {
			msg = "versitygw not found at $VERSITYGW=" + p + ": run .ci/install-s3.sh or fix $VERSITYGW"
		}
		if os.Getenv("CI") == "true" {
			t.Fatal(msg)
		}
		t.Skip(msg)
	}
	versityGW.once.Do(func() {
		if err := checkVersityGWVersion(bin); err != nil {
			versityGW.err = err
			return
		}
		versityGW.endpoint, versityGW.err = startVersityGW(bin)
	})
	if versityGW.err != nil {
		t.Fatal(versityGW.err)
	}
	return versityGW.endpoint
}

// findVersityGW looks in $VERSITYGW, then <repo>/.tools/bin, then PATH. An
// explicit $VERSITYGW that does not exist counts as missing rather than
// falling back, so a typo cannot silently test against another binary.
func findVersityGW() string {
	if p := os.Getenv("VERSITYGW"); p != "" {
		if _, err := os.Stat(p); err != nil {
			return ""
		}
		return p
	}
	if dir, err := os.Getwd(); err == nil {
		for ; ; dir = filepath.Dir(dir) {
			if _, err := os.Stat(filepath.Join(dir, "go.mod")); err == nil {
				p := filepath.Join(dir, ".tools", "bin", "versitygw")
				if _, err := os.Stat(p); err == nil {
					return p
				}
				break
			}
			if filepath.Dir(dir) == dir {
				break
			}
		}
	}
	p, _ := exec.LookPath("versitygw")
	return p
}

// checkVersityGWVersion refuses a binary known to be too old. A binary whose
// module version cannot be read (a local source build) is trusted.
func checkVersityGWVersion(bin string) error {
	info, err := buildinfo.ReadFile(bin)
	if err != nil {
		return nil
	}
	v := info.Main.Version
	if !strings.HasPrefix(v, "v") {
		return nil
	}
	if versionLess(v, minVersityGW) {
		return fmt.Errorf("versitygw at %s is %s; need %s or later (older versions let concurrent conditional PUTs all win): run .ci/install-s3.sh", bin, v, minVersityGW)
	}
	return nil
}

// versionLess compares the numeric vMAJOR.MINOR.PATCH parts of a and b.
func versionLess(a, b string) bool {
	pa, pb := versionParts(a), versionParts(b)
	for i := range 3 {
		if pa[i] != pb[i] {
			return pa[i] < pb[i]
		}
	}
	return false
}

func versionParts(v string) [3]int {
	var out [3]int
	v, _, _ = strings.Cut(strings.TrimPrefix(v, "v"), "-")
	for i, f := range strings.SplitN(v, ".", 3) {
		out[i], _ = strconv.Atoi(f)
	}
	return out
}

func startVersityGW(bin string) (string, error) {
	dir, err := os.MkdirTemp("", "splitbrain-versitygw-")
	if err != nil {
		return "", err
	}
	versityGW.dir = dir
	root := filepath.Join(dir, "root")
	if err := os.Mkdir(root, 0o755); err != nil {
		return "", err
	}
	logPath := filepath.Join(dir, "versitygw.log")
	var lastErr error
	// The free port is found by binding and releasing it, so another process
	// can take it in between; a few attempts cover that race.
	for range 3 {
		port, err := freePort()
		if err != nil {
			return "", err
		}
		logFile, err := os.Create(logPath)
		if err != nil {
			return "", err
		}
		cmd := exec.Command(bin,
			"--access", testAccessKey, "--secret", testSecretKey,
			"--port", "127.0.0.1:"+strconv.Itoa(port), "--quiet",
			"posix", root)
		cmd.Stdout, cmd.Stderr = logFile, logFile
		// If the test binary dies without running TestMain's cleanup, the
		// kernel still kills the server.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			logFile.Close()
			return "", fmt.Errorf("start versitygw: %w", err)
		}
		exited := make(chan struct{})
		go func() { cmd.Wait(); logFile.Close(); close(exited) }()
		versityGW.cmd, versityGW.exited = cmd, exited
		endpoint := "http://127.0.0.1:" + strconv.Itoa(port)
		if lastErr = waitAndCreateBucket(endpoint, exited); lastErr == nil {
			return endpoint, nil
		}
		stopVersityGW()
		out, _ := os.ReadFile(logPath)
		lastErr = fmt.Errorf("versitygw on %s: %w\n%s", endpoint, lastErr, out)
	}
	return "", lastErr
}

// waitAndCreateBucket retries CreateBucket until the server answers; that it
// answers a signed request is also the readiness check.
func waitAndCreateBucket(endpoint string, exited <-chan struct{}) error {
	client := testS3Client(endpoint, 1)
	deadline := time.Now().Add(30 * time.Second)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		_, err := client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(testBucket)})
		cancel()
		if err == nil {
			return nil
		}
		select {
		case <-exited:
			return fmt.Errorf("exited before answering: %w", err)
		default:
		}
		if time.Now().After(deadline) {
			return fmt.Errorf("no answer within 30s: %w", err)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

func stopVersityGW() {
	if versityGW.cmd != nil && versityGW.cmd.Process != nil {
		versityGW.cmd.Process.Kill()
		<-versityGW.exited
		versityGW.cmd = nil
	}
	if versityGW.dir != "" {
		os.RemoveAll(versityGW.dir)
	}
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// testS3Client is a client with the test credentials, bypassing the AWS
// config chain (for setup and for the error-classification tests).
func testS3Client(endpoint string, maxAttempts int) *s3.Client {
	return s3.New(s3.Options{
		Region:                     "us-east-1",
		BaseEndpoint:               aws.String(endpoint),
		UsePathStyle:               true,
		Credentials:                credentials.NewStaticCredentialsProvider(testAccessKey, testSecretKey, ""),
		RetryMaxAttempts:           maxAttempts,
		RequestChecksumCalculation: aws.RequestChecksumCalculationWhenRequired,
		ResponseChecksumValidation: aws.ResponseChecksumValidationWhenRequired,
	})
}

// useTestCredentials points the AWS config chain at the test keys only, so
// Open is exercised the way production uses it without reading the host's
// AWS files or asking an instance-metadata service.
func useTestCredentials(t *testing.T) {
	t.Setenv("AWS_ACCESS_KEY_ID", testAccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", testSecretKey)
	t.Setenv("AWS_SESSION_TOKEN", "")
	t.Setenv("AWS_PROFILE", "")
	t.Setenv("AWS_REGION", "")
	t.Setenv("AWS_DEFAULT_REGION", "")
	t.Setenv("AWS_CONFIG_FILE", filepath.Join(t.TempDir(), "no-config"))
	t.Setenv("AWS_SHARED_CREDENTIALS_FILE", filepath.Join(t.TempDir(), "no-credentials"))
	t.Setenv("AWS_EC2_METADATA_DISABLED", "true")
}

var testPrefixSeq atomic.Int64

func TestS3Contract(t *testing.T) {
	endpoint := needVersityGW(t)
	RunContractTests(t, func(t *testing.T) func() Arbiter {
		useTestCredentials(t)
		prefix := fmt.Sprintf("t%d-%d", time.Now().UnixNano(), testPrefixSeq.Add(1))
		return func() Arbiter {
			a, err := Open("s3://" + testBucket + "/" + prefix + "?endpoint=" + endpoint)
			if err != nil {
				t.Fatal(err)
			}
			return a
		}
	}, func(t *testing.T) Arbiter {
		useTestCredentials(t)
		port, err := freePort() // released at once, so nothing listens there
		if err != nil {
			t.Fatal(err)
		}
		a, err := Open(fmt.Sprintf("s3://%s/x?endpoint=http://127.0.0.1:%d", testBucket, port))
		if err != nil {
			t.Fatal(err)
		}
		return a
	})
}

func TestS3CorruptClaimDecidesNothing(t *testing.T) {
	endpoint := needVersityGW(t)
	client := testS3Client(endpoint, 1)
	a, err := NewS3Arbiter(client, testBucket, fmt.Sprintf("corrupt-%d", time.Now().UnixNano()))
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	if _, err := a.Init(ctx); err != nil {
		t.Fatal(err)
	}
	takeEpoch(t, a, "vm1", 0)
	if _, err := client.PutObject(ctx, &s3.PutObjectInput{
		Bucket: aws.String(testBucket), Key: aws.String(a.key("vm1", 1)), Body: bytes.NewReader([]byte("not json")),
	}); err != nil {
		t.Fatal(err)
	}
	if d, err := a.Claim(ctx, Claim{VMID: "vm1", Generation: 1, Claimant: "x"}); !errors.Is(err, ErrCorruptClaim) || d.Won {
		t.Fatalf("Claim over a corrupt object = %+v, %v; want ErrCorruptClaim", d, err)
	}
}

// TestS3ErrorClassification checks how each HTTP answer to the conditional
// PUT is treated. The canned server implements no S3 semantics; it only
// returns the status codes a real one can, which a real server cannot be
// made to return on demand.
func TestS3ErrorClassification(t *testing.T) {
	s3Error := func(w http.ResponseWriter, status int, code string) {
		w.Header().Set("Content-Type", "application/xml")
		w.WriteHeader(status)
		fmt.Fprintf(w, `<?xml version="1.0" encoding="UTF-8"?><Error><Code>%s</Code><Message>canned</Message></Error>`, code)
	}
	holderBody := `{"format":"ftvm-claim/1","vm_id":"vm1","generation":1,"claimant":"%s","claimed_at":"2025-01-02T03:04:05Z"}`
	markerBody := `{"format":"ftvm-arbiter/1","cluster_id":"c1","created_at":"2025-01-02T03:04:05Z"}`
	epochBody := `{"format":"ftvm-epoch/1","vm_id":"vm1","epoch":1,"taken_by":"t","taken_at":"2025-01-02T03:04:05Z"}`
	cases := []struct {
		name          string
		marker        int   // status of the marker GET (0: 200)
		put           []int // status of each successive PUT; the last repeats
		get           int   // status of GET after a 412
		getOwner      string
		wantWon       bool
		wantErr       bool
		wantPermanent bool
		wantPuts      int
	}{
		{name: "200 wins", put: []int{200}, wantWon: true, wantPuts: 1},
		{name: "409 then 200 retries and wins", put: []int{409, 409, 200}, wantWon: true, wantPuts: 3},
		{name: "409 forever is an error", put: []int{409}, wantErr: true, wantPuts: 9},
		{name: "412 holder other loses", put: []int{412}, get: 200, getOwner: "primary@h1:7000", wantPuts: 1},
		{name: "412 holder me wins", put: []int{412}, get: 200, getOwner: "me", wantWon: true, wantPuts: 1},
		{name: "412 holder unreadable is an error", put: []int{412}, get: 500, wantErr: true, wantPuts: 1},
		{name: "412 holder vanished is an error", put: []int{412}, get: 404, wantErr: true, wantPuts: 1},
		{name: "500 is an error", put: []int{500}, wantErr: true, wantPuts: 1},
		{name: "403 is a permanent error", put: []int{403}, wantErr: true, wantPermanent: true, wantPuts: 1},
		{name: "404 no bucket is a permanent error", put: []int{404}, wantErr: true, wantPermanent: true, wantPuts: 1},
		{name: "501 is an error", put: []int{501}, wantErr: true, wantPuts: 1},
		{name: "marker 403 is a permanent error", marker: 403, wantErr: true, wantPermanent: true},
		{name: "marker 404 no bucket is a permanent error", marker: 404, wantErr: true, wantPermanent: true},
		{name: "marker 500 is an error", marker: 500, wantErr: true},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			var puts atomic.Int32
			srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
				switch r.Method {
				case http.MethodPut:
					if r.Header.Get("If-None-Match") != "*" {
						t.Errorf("PUT without If-None-Match: *")
					}
					n := int(puts.Add(1))
					status := tc.put[min(n, len(tc.put))-1]
					switch status {
					case 200:
						w.Header().Set("ETag", `"x"`)
					case 409:
						s3Error(w, status, "ConditionalRequestConflict")
					case 412:
						s3Error(w, status, "PreconditionFailed")
					case 404:
						s3Error(w, status, "NoSuchBucket")
					default:
						s3Error(w, status, "Canned")
					}
				case http.MethodGet:
					switch {
					case strings.HasSuffix(r.URL.Path, "/.ftvm-arbiter"):
						switch tc.marker {
						case 0:
							fmt.Fprint(w, markerBody)
						case 404:
							s3Error(w, 404, "NoSuchBucket")
						default:
							s3Error(w, tc.marker, "Canned")
						}
						return
					case strings.HasSuffix(r.URL.Path, "/epoch"):
						w.Header().Set("ETag", `"e1"`)
						fmt.Fprint(w, epochBody)
						return
					}
					switch tc.get {
					case 200:
						fmt.Fprintf(w, holderBody, tc.getOwner)
					case 404:
						s3Error(w, 404, "NoSuchKey")
					default:
						s3Error(w, tc.get, "InternalError")
					}
				}
			}))
			defer srv.Close()
			a, err := NewS3Arbiter(testS3Client(srv.URL, 1), "b", "p")
			if err != nil {
				t.Fatal(err)
			}
			d, err := a.Claim(context.Background(), Claim{VMID: "vm1", Generation: 1, Claimant: "me"})
			if d.Won != tc.wantWon || (err != nil) != tc.wantErr || (err != nil && d.Won) || IsPermanent(err) != tc.wantPermanent {
				t.Fatalf("Claim = %+v, %v (permanent %v); want won=%v err=%v permanent=%v", d, err, IsPermanent(err), tc.wantWon, tc.wantErr, tc.wantPermanent)
			}
			if got := int(puts.Load()); got != tc.wantPuts {
				t.Errorf("%d PUTs, want %d", got, tc.wantPuts)
			}
			if tc.getOwner != "" && d.Holder.Claimant != tc.getOwner {
				t.Errorf("holder %q, want %q", d.Holder.Claimant, tc.getOwner)
			}
		})
	}
}

// TestS3CheckRefusesWhatAFailoverWouldNeed: start-up refuses a bucket that
// does not exist, credentials the server rejects, a prefix nobody ran init
// on, each before any failover depends on them; a bucket and prefix that
// work pass.
func TestS3CheckRefusesWhatAFailoverWouldNeed(t *testing.T) {
	endpoint := needVersityGW(t)
	ctx := context.Background()
	prefix := fmt.Sprintf("check-%d", time.Now().UnixNano())
	good, err := NewS3Arbiter(testS3Client(endpoint, 1), testBucket, prefix)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := good.Check(ctx); !errors.Is(err, ErrNotInitialized) {
		t.Fatalf("Check before init = %v; want ErrNotInitialized", err)
	}
	id, err := good.Init(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if got, err := good.Check(ctx); err != nil || got != id {
		t.Fatalf("Check after init = %q, %v; want %q", got, err, id)
	}

	noBucket, _ := NewS3Arbiter(testS3Client(endpoint, 1), "no-such-bucket-ftvm", prefix)
	if _, err := noBucket.Check(ctx); err == nil || !IsPermanent(err) {
		t.Errorf("Check of a missing bucket = %v; want a permanent error", err)
	}
	if _, err := noBucket.Init(ctx); err == nil || !IsPermanent(err) {
		t.Errorf("Init in a missing bucket = %v; want a permanent error", err)
	}

	badKeys := s3.New(s3.Options{
		Region: "us-east-1", BaseEndpoint: aws.String(endpoint), UsePathStyle: true, RetryMaxAttempts: 1,
		Credentials: credentials.NewStaticCredentialsProvider(testAccessKey, "not-the-secret", ""),
	})
	badCreds, _ := NewS3Arbiter(badKeys, testBucket, prefix)
	if _, err := badCreds.Check(ctx); err == nil || !IsPermanent(err) {
		t.Errorf("Check with bad credentials = %v; want a permanent error", err)
	}
	if d, err := badCreds.Claim(ctx, Claim{VMID: "vm1", Generation: 1, Claimant: "x"}); err == nil || !IsPermanent(err) || d.Won {
		t.Errorf("Claim with bad credentials = %+v, %v; want a permanent error", d, err)
	}

	// The probe leaves nothing behind.
	list, err := testS3Client(endpoint, 1).ListObjectsV2(ctx, &s3.ListObjectsV2Input{Bucket: aws.String(testBucket), Prefix: aws.String(prefix + "/")})
	if err != nil {
		t.Fatal(err)
	}
	for _, o := range list.Contents {
		if k := aws.ToString(o.Key); k != prefix+"/"+markerName {
			t.Errorf("left behind: %s", k)
		}
	}
}

// TestS3CheckRefusesAServerWithoutConditionalWrites: a server that accepts
// every PUT (as older S3-compatible servers do, ignoring If-None-Match)
// would let both sides win; start-up must say so.
func TestS3CheckRefusesAServerWithoutConditionalWrites(t *testing.T) {
	marker := `{"format":"ftvm-arbiter/1","cluster_id":"c1","created_at":"2025-01-02T03:04:05Z"}`
	var deletes atomic.Int32
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch r.Method {
		case http.MethodGet:
			fmt.Fprint(w, marker)
		case http.MethodPut:
			w.Header().Set("ETag", `"same"`)
		case http.MethodDelete:
			deletes.Add(1)
			w.WriteHeader(http.StatusNoContent)
		}
	}))
	defer srv.Close()
	a, err := NewS3Arbiter(testS3Client(srv.URL, 1), "b", "p")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := a.Check(context.Background()); !errors.Is(err, ErrNoConditionalWrites) || !IsPermanent(err) {
		t.Fatalf("Check = %v; want a permanent ErrNoConditionalWrites", err)
	}
	if deletes.Load() != 1 {
		t.Errorf("the probe was deleted %d times, want 1", deletes.Load())
	}
}

func TestVersionLess(t *testing.T) {
	for _, c := range []struct {
		a, b string
		want bool
	}{
		{"v1.7.9", "v1.8.0", true},
		{"v1.8.0", "v1.8.0", false},
		{"v1.8.1", "v1.8.0", false},
		{"v1.10.0", "v1.8.0", false},
		{"v0.24.0", "v1.8.0", true},
	} {
		if got := versionLess(c.a, c.b); got != c.want {
			t.Errorf("versionLess(%s, %s) = %v", c.a, c.b, got)
		}
	}
}
