package splitbrain

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"strconv"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	awshttp "github.com/aws/aws-sdk-go-v2/aws/transport/http"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"
)

// S3Arbiter keeps claims as objects <prefix><vmid>/gen-<n>.claim in a bucket.
// The test-and-set is PutObject with If-None-Match: *, which S3 (and
// compatible servers that implement conditional writes) performs atomically:
// one writer gets 200, every other gets 412 Precondition Failed.
type S3Arbiter struct {
	client *s3.Client
	bucket string
	prefix string // empty or ending in "/"
	now    func() time.Time
	// conflictRetries bounds the retries after 409 ConditionalRequestConflict
	// (S3 returns it when a conditional write races another one in flight).
	conflictRetries int
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

// Claim implements Arbiter.
func (a *S3Arbiter) Claim(ctx context.Context, c Claim) (Decision, error) {
	if err := c.validate(); err != nil {
		return Decision{}, err
	}
	rec := Record{VMID: c.VMID, Generation: c.Generation, Claimant: c.Claimant, Reason: c.Reason, ClaimedAt: a.now().UTC()}
	data, err := encodeRecord(rec)
	if err != nil {
		return Decision{}, err
	}
	key := a.key(c.VMID, c.Generation)
	for attempt := 0; ; attempt++ {
		_, err := a.client.PutObject(ctx, &s3.PutObjectInput{
			Bucket:        aws.String(a.bucket),
			Key:           aws.String(key),
			Body:          bytes.NewReader(data),
			ContentLength: aws.Int64(int64(len(data))),
			ContentType:   aws.String("application/json"),
			IfNoneMatch:   aws.String("*"),
		})
		switch status := httpStatus(err); {
		case err == nil:
			return Decision{Won: true, Holder: rec}, nil
		case status == http.StatusPreconditionFailed:
			return a.conflict(ctx, c)
		case status == http.StatusConflict && attempt < a.conflictRetries:
			// Another conditional write to this key was in flight. Ours is
			// still conditional, so retrying cannot produce a second winner.
			if err := sleepCtx(ctx, conflictBackoff(attempt)); err != nil {
				return Decision{}, fmt.Errorf("splitbrain: claim s3://%s/%s: %w", a.bucket, key, err)
			}
		default:
			// Network, 5xx, auth, exhausted 409 retries: undecided. The PUT
			// may even have landed; the caller's retry will then find our own
			// record and win.
			return Decision{}, fmt.Errorf("splitbrain: claim s3://%s/%s: %w", a.bucket, key, err)
		}
	}
}

// conflict handles 412: the object exists; read it to learn whether it is
// ours (a retry whose first PUT succeeded) or the winner's.
func (a *S3Arbiter) conflict(ctx context.Context, c Claim) (Decision, error) {
	held, ok, err := a.Holder(ctx, c.VMID, c.Generation)
	if err != nil {
		// Without the record we cannot tell "lost" from "won earlier", and
		// reporting Lost could halt the only live side: stay undecided.
		return Decision{}, fmt.Errorf("splitbrain: claim %s gen %d was taken, reading the holder failed: %w", c.VMID, c.Generation, err)
	}
	if !ok {
		return Decision{}, fmt.Errorf("splitbrain: claim %s gen %d: PUT said the claim exists but GET finds none", c.VMID, c.Generation)
	}
	return decideOnConflict(c, held), nil
}

// Holder implements Arbiter.
func (a *S3Arbiter) Holder(ctx context.Context, vmID string, generation uint64) (Record, bool, error) {
	if err := validateSlot(vmID, generation); err != nil {
		return Record{}, false, err
	}
	key := a.key(vmID, generation)
	out, err := a.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(a.bucket), Key: aws.String(key)})
	if err != nil {
		var noKey *types.NoSuchKey
		if errors.As(err, &noKey) {
			return Record{}, false, nil
		}
		return Record{}, false, fmt.Errorf("splitbrain: read s3://%s/%s: %w", a.bucket, key, err)
	}
	defer out.Body.Close()
	// A claim is a few hundred bytes; the limit keeps a stray huge object
	// from being read into memory.
	b, err := io.ReadAll(io.LimitReader(out.Body, 64<<10))
	if err != nil {
		return Record{}, false, fmt.Errorf("splitbrain: read s3://%s/%s: %w", a.bucket, key, err)
	}
	rec, err := decodeRecord(b, vmID, generation)
	if err != nil {
		return Record{}, false, err
	}
	return rec, true, nil
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
	return time.Duration(rand.Int64N(int64(d)) + 1)
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
