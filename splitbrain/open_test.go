package splitbrain

import (
	"strings"
	"testing"
)

func TestParseArbiterURL(t *testing.T) {
	good := []struct {
		url  string
		want arbiterURL
	}{
		{"file:///srv/ftvm", arbiterURL{fileRoot: "/srv/ftvm"}},
		{"file:///srv/ftvm/", arbiterURL{fileRoot: "/srv/ftvm"}},
		{"s3://bucket", arbiterURL{bucket: "bucket"}},
		{"s3://bucket/ftvm/claims", arbiterURL{bucket: "bucket", prefix: "ftvm/claims"}},
		{"s3://bucket/p?region=eu-west-1", arbiterURL{bucket: "bucket", prefix: "p", region: "eu-west-1"}},
		{"s3://bucket/p?endpoint=http://127.0.0.1:9000", arbiterURL{bucket: "bucket", prefix: "p", endpoint: "http://127.0.0.1:9000", pathStyle: true}},
		{"s3://bucket?endpoint=https://s3.example:443&path-style=false&region=r1", arbiterURL{bucket: "bucket", endpoint: "https://s3.example:443", region: "r1"}},
		{"s3://bucket?path-style=true", arbiterURL{bucket: "bucket", pathStyle: true}},
	}
	for _, g := range good {
		got, err := parseArbiterURL(g.url)
		if err != nil || got != g.want {
			t.Errorf("parse %q = %+v, %v; want %+v", g.url, got, err, g.want)
		}
	}

	bad := []struct{ url, mention string }{
		{"", "scheme"},
		{"/srv/ftvm", "scheme"},
		{"nfs:///srv", "scheme"},
		{"file://srv/ftvm", "three slashes"},
		{"file:srv/ftvm", "three slashes"},
		{"file:///srv?x=1", "no options"},
		{"file:///srv#frag", "fragment"},
		{"s3://", "BUCKET"},
		{"s3:bucket", "BUCKET"},
		{"s3://key:secret@bucket", "user info"},
		{"s3://bucket?endpiont=http://x", "unknown option"},
		{"s3://bucket?endpoint=127.0.0.1:9000", "http"},
		{"s3://bucket?endpoint=ftp://x", "http"},
		{"s3://bucket?endpoint=http://", "host"},
		{"s3://bucket?region=", "empty region"},
		{"s3://bucket?path-style=yes", "path-style"},
		{"s3://bucket?region=a&region=b", "2 times"},
		{"s3://bucket?%zz", "invalid"},
	}
	for _, b := range bad {
		_, err := parseArbiterURL(b.url)
		if err == nil {
			t.Errorf("parse %q succeeded; want an error mentioning %q", b.url, b.mention)
			continue
		}
		if !strings.HasPrefix(err.Error(), "splitbrain: ") || !strings.Contains(err.Error(), b.mention) {
			t.Errorf("parse %q: error %q; want prefix \"splitbrain: \" and mention of %q", b.url, err, b.mention)
		}
	}
}

func TestOpenFileNeedsNoIO(t *testing.T) {
	// Open must not fail (or create anything) for a share that is not
	// mounted yet; the claim is where that is noticed.
	a, err := Open("file:///nonexistent/ftvm-share")
	if err != nil {
		t.Fatal(err)
	}
	if _, ok := a.(*FileArbiter); !ok {
		t.Fatalf("Open(file://) = %T", a)
	}
}

func TestValidateVMID(t *testing.T) {
	for _, id := range []string{"vm1", "web-01.prod", "A_b.c-9", "a..b"} {
		if err := ValidateVMID(id); err != nil {
			t.Errorf("ValidateVMID(%q) = %v", id, err)
		}
	}
}
