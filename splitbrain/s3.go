package splitbrain

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	mrand "math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// S3Arbiter keeps claims as objects in a bucket:
//
//	<prefix>.ftvm-arbiter            the cluster marker (Init)
//	<prefix><vmid>/epoch             the VM's current epoch
//	<prefix><vmid>/gen-<n>.claim     the claim of generation (epoch) n
//
// A claim is PutObject with If-None-Match: *, which S3 (and compatible
// servers that implement conditional writes) performs atomically: one writer
// gets 200, every other gets 412 Precondition Failed. An epoch advance is
// PutObject with If-Match on the ETag of the epoch object it read (or
// If-None-Match: * for the first epoch): a compare-and-swap.
type S3Arbiter struct {
	client *s3.Client
	bucket string
	prefix string // empty or ending in "/"
	now    func() time.Time
	// conflictRetries bounds the retries after 409 ConditionalRequestConflict
	// (S3 returns it when a conditional write races another one in flight).
	conflictRetries int
	cluster         clusterPin
}

// NewS3Arbiter returns an arbiter over bucket/prefix using client.
func NewS3Arbiter(client *s3.Client, bucket, prefix string) (*S3Arbiter, error) {
	if client == nil {
		return nil, errors.New("splitbrain: nil S3 client")
	}
	if bucket == "" {
		return nil, errors.New("splitbrain: empty S3 bucket name")
	}
	if prefix != "" && prefix[len(prefix)-1] != '/' {
		prefix += "/"
	}
	return &S3Arbiter{client: client, bucket: bucket, prefix: prefix, now: time.Now, conflictRetries: 8}, nil
}

func (a *S3Arbiter) key(vmID string, generation uint64) string {
	return a.prefix + vmID + "/gen-" + strconv.FormatUint(generation, 10) + ".claim"
}

func (a *S3Arbiter) epochKey(vmID string) string { return a.prefix + vmID + "/epoch" }

func (a *S3Arbiter) url(key string) string { return "s3://" + a.bucket + "/" + key }

// Init implements Arbiter.
func (a *S3Arbiter) Init(ctx context.Context) (string, error) {
	data, _, err := newMarker(a.now())
	if err != nil {
		return "", err
	}
	key := a.prefix + markerName
	// 412: a marker is there already; it stays, and counts.
	if _, err := a.put(ctx, key, data, putIfAbsent); err != nil && !errors.Is(err, errPreconditionFailed) {
		return "", fmt.Errorf("splitbrain: init %s: %w", a.url(key), err)
	}
	return a.checkCluster(ctx)
}

// Check implements Arbiter: the marker is there, and a probe object shows
// that the credentials may write and that the server honours If-None-Match
// and If-Match, which claims and epoch advances depend on.
func (a *S3Arbiter) Check(ctx context.Context) (string, error) {
	id, err := a.checkCluster(ctx)
	if err != nil {
		return "", err
	}
	var nonce [8]byte
	if _, err := rand.Read(nonce[:]); err != nil {
		return "", fmt.Errorf("splitbrain: probe name: %w", err)
	}
	key := a.prefix + ".ftvm-probe-" + hex.EncodeToString(nonce[:])
	probeErr := a.probe(ctx, key)
	_, delErr := a.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(a.bucket), Key: aws.String(key)})
	if probeErr != nil {
		return "", probeErr
	}
	if delErr != nil {
		return "", s3Error(fmt.Errorf("splitbrain: remove probe %s: %w", a.url(key), delErr))
	}
	return id, nil
}

// probe writes key four times; only the first and last may succeed.
func (a *S3Arbiter) probe(ctx context.Context, key string) error {
	body := []byte("ftvm arbiter probe; safe to delete\n")
	etag, err := a.put(ctx, key, body, putIfAbsent)
	if err != nil {
		return fmt.Errorf("splitbrain: write probe %s: %w", a.url(key), err)
	}
	ignored := func(header string) error {
		return permanent(fmt.Errorf("%w: a second PUT of %s with %s succeeded; it must fail with 412 (use a server that implements conditional writes)",
			ErrNoConditionalWrites, a.url(key), header))
	}
	if _, err := a.put(ctx, key, body, putIfAbsent); err == nil {
		return ignored("If-None-Match: *")
	} else if !errors.Is(err, errPreconditionFailed) {
		return fmt.Errorf("splitbrain: probe %s: %w", a.url(key), err)
	}
	if _, err := a.put(ctx, key, body, putIfMatch(`"ftvm-not-the-etag"`)); err == nil {
		return ignored("If-Match on another ETag")
	} else if !errors.Is(err, errPreconditionFailed) {
		return fmt.Errorf("splitbrain: probe %s: %w", a.url(key), err)
	}
	if _, err := a.put(ctx, key, body, putIfMatch(etag)); err != nil {
		return fmt.Errorf("splitbrain: probe %s: a PUT with If-Match on its own ETag failed: %w", a.url(key), err)
	}
	return nil
}

// checkCluster reads the marker and checks it against the pinned cluster id.
func (a *S3Arbiter) checkCluster(ctx context.Context) (string, error) {
	key := a.prefix + markerName
	b, _, ok, err := a.get(ctx, key, 4<<10)
	if err != nil {
		return "", fmt.Errorf("splitbrain: read cluster marker: %w", err)
	}
	if !ok {
		return "", fmt.Errorf("%w: %s is missing (run `ftvm arbiter init --arbiter s3://%s/%s...` once)", ErrNotInitialized, a.url(key), a.bucket, a.prefix)
	}
	id, err := decodeMarker(b, a.url(key))
	if err != nil {
		return "", err
	}
	return a.cluster.check(id, "s3://"+a.bucket+"/"+a.prefix)
}

// Claim implements Arbiter.
func (a *S3Arbiter) Claim(ctx context.Context, c Claim) (Decision, error) {
	if err := c.validate(); err != nil {
		return Decision{}, err
	}
	if _, err := a.checkCluster(ctx); err != nil {
		return Decision{}, err
	}
	current, _, err := a.readEpoch(ctx, c.VMID)
	if err != nil {
		return Decision{}, err
	}
	if err := checkEpoch(c, current.Epoch); err != nil {
		return Decision{}, err
	}
	rec := Record{VMID: c.VMID, Generation: c.Generation, Claimant: c.Claimant, Reason: c.Reason, ClaimedAt: a.now().UTC()}
	data, err := encodeRecord(rec)
	if err != nil {
		return Decision{}, err
	}
	key := a.key(c.VMID, c.Generation)
	switch _, err := a.put(ctx, key, data, putIfAbsent); {
	case err == nil:
		return Decision{Won: true, Holder: rec}, nil
	case errors.Is(err, errPreconditionFailed):
		return a.conflict(ctx, c)
	default:
		// Network, 5xx, exhausted 409 retries: undecided. The PUT may even
		// have landed; the caller's retry will then find our own record and
		// win. 403 and a missing bucket are permanent (s3Error).
		return Decision{}, fmt.Errorf("splitbrain: claim %s: %w", a.url(key), err)
	}
}

// conflict handles 412: the object exists; read it to learn whether it is
// ours (a retry whose first PUT succeeded) or the winner's.
func (a *S3Arbiter) conflict(ctx context.Context, c Claim) (Decision, error) {
	held, ok, err := a.readHolder(ctx, c.VMID, c.Generation)
	if err != nil {
		// Without the record we cannot tell "lost" from "won earlier", and
		// reporting Lost could halt the only live side: stay undecided.
		return Decision{}, fmt.Errorf("splitbrain: claim %s gen %d was taken, reading the holder failed: %w", c.VMID, c.Generation, err)
	}
	if !ok {
		return Decision{}, fmt.Errorf("splitbrain: claim %s gen %d: PUT said the claim exists but GET finds none", c.VMID, c.Generation)
	}
	return decideOnConflict(c, held)
}

// Holder implements Arbiter.
func (a *S3Arbiter) Holder(ctx context.Context, vmID string, generation uint64) (Record, bool, error) {
	if err := validateSlot(vmID, generation); err != nil {
		return Record{}, false, err
	}
	if _, err := a.checkCluster(ctx); err != nil {
		return Record{}, false, err
	}
	return a.readHolder(ctx, vmID, generation)
}

func (a *S3Arbiter) readHolder(ctx context.Context, vmID string, generation uint64) (Record, bool, error) {
	key := a.key(vmID, generation)
	// A claim is a few hundred bytes; the limit keeps a stray huge object
	// from being read into memory.
	b, _, ok, err := a.get(ctx, key, 64<<10)
	if err != nil || !ok {
		return Record{}, false, err
	}
	rec, err := decodeRecord(b, vmID, generation)
	if err != nil {
		return Record{}, false, err
	}
	return rec, true, nil
}

// Epoch implements Arbiter.
func (a *S3Arbiter) Epoch(ctx context.Context, vmID string) (EpochRecord, error) {
	if err := ValidateVMID(vmID); err != nil {
		return EpochRecord{}, err
	}
	if _, err := a.checkCluster(ctx); err != nil {
		return EpochRecord{}, err
	}
	rec, _, err := a.readEpoch(ctx, vmID)
	return rec, err
}

// readEpoch returns the VM's epoch record and the ETag it was read with
// ("" when there is none yet).
func (a *S3Arbiter) readEpoch(ctx context.Context, vmID string) (EpochRecord, string, error) {
	b, etag, ok, err := a.get(ctx, a.epochKey(vmID), 64<<10)
	if err != nil {
		return EpochRecord{}, "", err
	}
	if !ok {
		return EpochRecord{VMID: vmID}, "", nil
	}
	rec, err := decodeEpoch(b, vmID, 0)
	if err != nil {
		return EpochRecord{}, "", err
	}
	if etag == "" {
		return EpochRecord{}, "", fmt.Errorf("splitbrain: %s came without an ETag; an epoch cannot be advanced without one", a.url(a.epochKey(vmID)))
	}
	return rec, etag, nil
}

// AdvanceEpoch implements Arbiter.
func (a *S3Arbiter) AdvanceEpoch(ctx context.Context, vmID string, from uint64, taker string) (EpochRecord, error) {
	if err := validateAdvance(vmID, from, taker); err != nil {
		return EpochRecord{}, err
	}
	if _, err := a.checkCluster(ctx); err != nil {
		return EpochRecord{}, err
	}
	current, etag, err := a.readEpoch(ctx, vmID)
	if err != nil {
		return EpochRecord{}, err
	}
	if current.Epoch != from {
		return EpochRecord{}, epochConflict(vmID, from, current.Epoch)
	}
	now := a.now().UTC()
	cond := putIfAbsent
	if from > 0 {
		data, err := encodeRecord(fenceRecord(vmID, from, taker, now))
		if err != nil {
			return EpochRecord{}, err
		}
		// 412: a real holder or a racing advance's fence; closed either way.
		key := a.key(vmID, from)
		if _, err := a.put(ctx, key, data, putIfAbsent); err != nil && !errors.Is(err, errPreconditionFailed) {
			return EpochRecord{}, fmt.Errorf("splitbrain: close %s: %w", a.url(key), err)
		}
		cond = putIfMatch(etag)
	}
	rec := EpochRecord{VMID: vmID, Epoch: from + 1, TakenBy: taker, TakenAt: now}
	data, err := encodeEpoch(rec)
	if err != nil {
		return EpochRecord{}, err
	}
	key := a.epochKey(vmID)
	switch _, err := a.put(ctx, key, data, cond); {
	case err == nil:
		return rec, nil
	case errors.Is(err, errPreconditionFailed):
		return EpochRecord{}, epochConflict(vmID, from, from+1)
	default:
		// Undecided: the PUT may have landed. A retry then reads our own
		// record and reports a conflict; Epoch tells who took it.
		return EpochRecord{}, fmt.Errorf("splitbrain: advance %s to epoch %d: %w", a.url(key), from+1, err)
	}
}

// errPreconditionFailed is what put returns for 412.
var errPreconditionFailed = errors.New("precondition failed (412)")

// putCondition sets the conditional header of a PutObject.
type putCondition func(*s3.PutObjectInput)

func putIfAbsent(in *s3.PutObjectInput) { in.IfNoneMatch = aws.String("*") }

func putIfMatch(etag string) putCondition {
	return func(in *s3.PutObjectInput) { in.IfMatch = aws.String(etag) }
}

// put does a conditional PutObject of key and returns the new ETag. It
// retries 409 ConditionalRequestConflict (another conditional write to the
// key was in flight; ours stays conditional, so a retry cannot make a second
// winner), returns errPreconditionFailed (wrapped) for 412, and classifies
// every other error with s3Error.
func (a *S3Arbiter) put(ctx context.Context, key string, data []byte, cond putCondition) (string, error) {
	for attempt := 0; ; attempt++ {
		in := &s3.PutObjectInput{
			Bucket:        aws.String(a.bucket),
			Key:           aws.String(key),
			Body:          bytes.NewReader(data),
			ContentLength: aws.Int64(int64(len(data))),
			ContentType:   aws.String("application/json"),
		}
		cond(in)
		out, err := a.client.PutObject(ctx, in)
		switch status := httpStatus(err); {
		case err == nil:
			return aws.ToString(out.ETag), nil
		case status == http.StatusPreconditionFailed:
			return "", fmt.Errorf("%s: %w", a.url(key), errPreconditionFailed)
		case status == http.StatusConflict && attempt < a.conflictRetries:
			if err := sleepCtx(ctx, conflictBackoff(attempt)); err != nil {
				return "", err
			}
		default:
			return "", s3Error(err)
		}
	}
}

// get reads key (at most limit bytes) and its ETag; ok is false when the
// key does not exist.
func (a *S3Arbiter) get(ctx context.Context, key string, limit int64) (body []byte, etag string, ok bool, err error) {
	out, err := a.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(a.bucket), Key: aws.String(key)})
	if err != nil {
		var noKey *types.NoSuchKey
		if errors.As(err, &noKey) {
			return nil, "", false, nil
		}
		return nil, "", false, s3Error(fmt.Errorf("splitbrain: read %s: %w", a.url(key), err))
	}
	defer out.Body.Close()
	b, err := io.ReadAll(io.LimitReader(out.Body, limit))
	if err != nil {
		return nil, "", false, fmt.Errorf("splitbrain: read %s: %w", a.url(key), err)
	}
	return b, aws.ToString(out.ETag), true, nil
}

// s3Error marks the answers a retry cannot change permanent: 403 (bad
// credentials, no permission) and 404 other than NoSuchKey (the bucket does
// not exist; get handles NoSuchKey before this).
func s3Error(err error) error {
	switch httpStatus(err) {
	case http.StatusForbidden, http.StatusNotFound:
		return permanent(err)
	}
	return err
}

// httpStatus returns the HTTP status of an SDK error, or 0 when the request
// got no HTTP response (network error, cancelled context).
func httpStatus(err error) int {
	var re *awshttp.ResponseError
	if errors.As(err, &re) {
		return re.HTTPStatusCode()
	}
	return 0
}

// conflictBackoff is 10ms·2^attempt with full jitter, capped at 1s: short,
// because a 409 means the competing write is finishing right now.
func conflictBackoff(attempt int) time.Duration {
	d := 10 * time.Millisecond << min(attempt, 7)
	d = min(d, time.Second)
	return time.Duration(mrand.Int64N(int64(d)) + 1)
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
