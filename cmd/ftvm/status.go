package main

import (
	"fmt"
	"net/http"
	"os"
	"sort"
	"strings"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
)

// cmdStatus prints a primary's or backup's metrics for a person.
func cmdStatus(args []string) int {
	if len(args) != 1 {
		fmt.Fprintln(os.Stderr, "usage: ftvm status ADDR   (the --metrics address of a primary or backup)")
		return exitUsage
	}
	url := args[0]
	if !strings.Contains(url, "://") {
		url = "http://" + url
	}
	if !strings.HasSuffix(url, "/metrics") {
		url += "/metrics"
	}
	client := http.Client{Timeout: 5 * time.Second}
	resp, err := client.Get(url)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm status: %v\n", err)
		return exitFailed
	}
	defer resp.Body.Close()
	// The zero TextParser panics on its first metric name (prometheus/common
	// v0.72 wants a validation scheme): name one.
	parser := expfmt.NewTextParser(model.UTF8Validation)
	families, err := parser.TextToMetricFamilies(resp.Body)
	if err != nil {
		fmt.Fprintf(os.Stderr, "ftvm status: %s is not Prometheus metrics: %v\n", url, err)
		return exitFailed
	}
	fmt.Print(formatStatus(families))
	return 0
}

func formatStatus(f map[string]*dto.MetricFamily) string {
	var b strings.Builder
	value := func(name string) (float64, bool) {
		fam, ok := f[name]
		if !ok || len(fam.Metric) == 0 {
			return 0, false
		}
		m := fam.Metric[0]
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue(), true
		case m.Gauge != nil:
			return m.Gauge.GetValue(), true
		}
		return 0, false
	}
	if fam, ok := f["ftvm_backend_info"]; ok && len(fam.Metric) > 0 && len(fam.Metric[0].Label) > 0 {
		fmt.Fprintf(&b, "backend              %s\n", fam.Metric[0].Label[0].GetValue())
	}
	if fam, ok := f["ftvm_role"]; ok {
		for _, m := range fam.Metric {
			if m.Gauge.GetValue() == 1 {
				fmt.Fprintf(&b, "role                 %s\n", m.Label[0].GetValue())
			}
		}
	}
	if v, ok := value("ftvm_protected"); ok {
		since := ""
		if at, ok := value("ftvm_protected_changed_timestamp_seconds"); ok && at > 0 {
			t := time.Unix(0, int64(at*1e9))
			since = fmt.Sprintf(" since %s (%v ago)", t.Format("15:04:05"), time.Since(t).Round(time.Second))
		}
		if v == 1 {
			fmt.Fprintf(&b, "protected            yes%s\n", since)
		} else {
			fmt.Fprintf(&b, "protected            NO: the guest runs alone%s; a backup may join (ftvm backup --join)\n", since)
		}
	}
	if v, ok := value("ftvm_backups_joined_total"); ok {
		fmt.Fprintf(&b, "backups joined       %.0f\n", v)
	}
	if v, ok := value("ftvm_transfer_bytes_sent"); ok && v > 0 {
		fmt.Fprintf(&b, "state transferred    %.0f bytes\n", v)
	}
	if v, ok := value("ftvm_logchannel_tls"); ok {
		if v == 1 {
			fmt.Fprintf(&b, "logging channel      mutual TLS\n")
		} else {
			fmt.Fprintf(&b, "logging channel      INSECURE: in clear, no TLS (--insecure-no-tls)\n")
		}
	}
	if fam, ok := f["ftvm_logchannel_refused_connections_total"]; ok {
		for _, m := range fam.Metric {
			if len(m.Label) > 0 && m.Counter != nil {
				fmt.Fprintf(&b, "%-20s %.0f\n", "refused ("+m.Label[0].GetValue()+")", m.Counter.GetValue())
			}
		}
	}
	rows := []struct{ name, label, unit string }{
		{"ftvm_log_entries_sent_total", "log entries sent", ""},
		{"ftvm_log_bytes_sent_total", "log bytes sent", "B"},
		{"ftvm_acks_total", "acks received", ""},
		{"ftvm_acked_seq", "acked up to seq", ""},
		{"ftvm_lag_exits", "backup lag (exits)", ""},
		{"ftvm_lag_seconds", "backup lag", "s"},
		{"ftvm_heartbeat_rtt_seconds", "heartbeat RTT", "s"},
		{"ftvm_held_outputs", "outputs held", ""},
		{"ftvm_held_output_bytes", "held output bytes", "B"},
		{"ftvm_log_entries_received_total", "log entries received", ""},
		{"ftvm_log_bytes_received_total", "log bytes received", "B"},
		{"ftvm_replayed_exit", "replayed up to exit", ""},
		{"ftvm_queued_bytes", "log bytes queued", "B"},
	}
	for _, r := range rows {
		if v, ok := value(r.name); ok {
			switch r.unit {
			case "s":
				fmt.Fprintf(&b, "%-20s %v\n", r.label, time.Duration(v*float64(time.Second)).Round(time.Microsecond))
			default:
				fmt.Fprintf(&b, "%-20s %.0f\n", r.label, v)
			}
		}
	}
	if fam, ok := f["ftvm_output_delay_seconds"]; ok && len(fam.Metric) > 0 && fam.Metric[0].Histogram != nil {
		h := fam.Metric[0].Histogram
		fmt.Fprintf(&b, "%-20s %d released, p50 <= %v, p99 <= %v\n", "output delay", h.GetSampleCount(),
			quantile(h, 0.5), quantile(h, 0.99))
	}
	return b.String()
}

// quantile is the upper bound of the histogram bucket holding quantile q.
func quantile(h *dto.Histogram, q float64) time.Duration {
	total := float64(h.GetSampleCount())
	if total == 0 {
		return 0
	}
	buckets := append([]*dto.Bucket(nil), h.Bucket...)
	sort.Slice(buckets, func(i, j int) bool { return buckets[i].GetUpperBound() < buckets[j].GetUpperBound() })
	for _, bk := range buckets {
		if float64(bk.GetCumulativeCount()) >= q*total {
			return time.Duration(bk.GetUpperBound() * float64(time.Second)).Round(time.Microsecond)
		}
	}
	return time.Duration(-1)
}
