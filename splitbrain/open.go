package splitbrain

import (
	"context"
	"fmt"
	"net/url"
	"path/filepath"
	"strconv"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/config"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// Open returns the arbiter a URL names:
//
//	file:///PATH                     claims under the directory PATH (must exist)
//	s3://BUCKET[/PREFIX][?options]   claims as objects in BUCKET under PREFIX
//
// S3 options: endpoint=URL (an S3-compatible server; http or https),
// region=NAME (default: the AWS environment/config chain, else us-east-1 with
// a custom endpoint), path-style=true|false (default true with a custom
// endpoint, false otherwise). Credentials come from the usual AWS chain
// (environment, shared config files, instance roles).
func Open(rawURL string) (Arbiter, error) {
	target, err := parseArbiterURL(rawURL)
	if err != nil {
		return nil, err
	}
	if target.fileRoot != "" {
		return NewFileArbiter(target.fileRoot)
	}
	return openS3(context.Background(), target)
}

// arbiterURL is a parsed Open URL: either fileRoot or the s3 fields are set.
type arbiterURL struct {
	fileRoot string

	bucket    string
	prefix    string
	endpoint  string
	region    string
	pathStyle bool
}

func parseArbiterURL(rawURL string) (arbiterURL, error) {
	u, err := url.Parse(rawURL)
	if err != nil {
		return arbiterURL{}, fmt.Errorf("splitbrain: arbiter URL: %w", err)
	}
	if u.Fragment != "" || u.User != nil {
		return arbiterURL{}, fmt.Errorf("splitbrain: arbiter URL %q: no user info or #fragment allowed", rawURL)
	}
	switch u.Scheme {
	case "file":
		return parseFileURL(rawURL, u)
	case "s3":
		return parseS3URL(rawURL, u)
	default:
		return arbiterURL{}, fmt.Errorf("splitbrain: arbiter URL %q: scheme must be file:// or s3://", rawURL)
	}
}

func parseFileURL(rawURL string, u *url.URL) (arbiterURL, error) {
	if u.Opaque != "" || u.Host != "" || !strings.HasPrefix(u.Path, "/") {
		return arbiterURL{}, fmt.Errorf("splitbrain: arbiter URL %q: want file:///ABSOLUTE/PATH (three slashes, no host)", rawURL)
	}
	if u.RawQuery != "" {
		return arbiterURL{}, fmt.Errorf("splitbrain: arbiter URL %q: file URLs take no options", rawURL)
	}
	return arbiterURL{fileRoot: filepath.Clean(u.Path)}, nil
}

func parseS3URL(rawURL string, u *url.URL) (arbiterURL, error) {
	if u.Opaque != "" || u.Host == "" {
		return arbiterURL{}, fmt.Errorf("splitbrain: arbiter URL %q: want s3://BUCKET[/PREFIX]", rawURL)
	}
	t := arbiterURL{bucket: u.Host, prefix: strings.TrimPrefix(u.Path, "/")}
	q, err := url.ParseQuery(u.RawQuery)
	if err != nil {
		return arbiterURL{}, fmt.Errorf("splitbrain: arbiter URL %q: %w", rawURL, err)
	}
	pathStyleSet := false
	for name, values := range q {
		if len(values) != 1 {
			return arbiterURL{}, fmt.Errorf("splitbrain: arbiter URL %q: option %s given %d times", rawURL, name, len(values))
		}
		v := values[0]
		switch name {
		case "endpoint":
			e, err := url.Parse(v)
			if err != nil || (e.Scheme != "http" && e.Scheme != "https") || e.Host == "" {
				return arbiterURL{}, fmt.Errorf("splitbrain: arbiter URL %q: endpoint %q must be an http:// or https:// URL with a host", rawURL, v)
			}
			t.endpoint = v
		case "region":
			if v == "" {
				return arbiterURL{}, fmt.Errorf("splitbrain: arbiter URL %q: empty region", rawURL)
			}
			t.region = v
		case "path-style":
			b, err := strconv.ParseBool(v)
			if err != nil {
				return arbiterURL{}, fmt.Errorf("splitbrain: arbiter URL %q: path-style=%q is not true or false", rawURL, v)
			}
			t.pathStyle, pathStyleSet = b, true
		default:
			// A misspelt option silently ignored could point two hosts at
			// different stores; refuse it.
			return arbiterURL{}, fmt.Errorf("splitbrain: arbiter URL %q: unknown option %q (known: endpoint, region, path-style)", rawURL, name)
		}
	}
	if !pathStyleSet {
		// S3-compatible servers rarely have wildcard DNS for bucket.host.
		t.pathStyle = t.endpoint != ""
	}
	return t, nil
}

func openS3(ctx context.Context, t arbiterURL) (*S3Arbiter, error) {
	var opts []func(*config.LoadOptions) error
	if t.region != "" {
		opts = append(opts, config.WithRegion(t.region))
	}
	cfg, err := config.LoadDefaultConfig(ctx, opts...)
	if err != nil {
		return nil, fmt.Errorf("splitbrain: load AWS config: %w", err)
	}
	if cfg.Region == "" {
		if t.endpoint == "" {
			return nil, fmt.Errorf("splitbrain: no region for s3://%s: add ?region= or set AWS_REGION", t.bucket)
		}
		cfg.Region = "us-east-1"
	}
	client := s3.NewFromConfig(cfg, func(o *s3.Options) {
		if t.endpoint != "" {
			o.BaseEndpoint = aws.String(t.endpoint)
		}
		o.UsePathStyle = t.pathStyle
		// Only send checksums S3 requires: S3-compatible servers differ in
		// which of the newer default checksum trailers they accept.
		o.RequestChecksumCalculation = aws.RequestChecksumCalculationWhenRequired
		o.ResponseChecksumValidation = aws.ResponseChecksumValidationWhenRequired
	})
	return NewS3Arbiter(client, t.bucket, t.prefix)
}
