package ft

import (
	"errors"
	"fmt"
	"net"
	"net/http"
	"time"

	"github.com/ftvm/ftvm/logchannel"
	"github.com/prometheus/client_golang/prometheus"
	"github.com/prometheus/client_golang/prometheus/promhttp"
)

// Metrics are one VMM's Prometheus metrics. A nil *Metrics records nothing.
type Metrics struct {
	reg         *prometheus.Registry
	heldCount   prometheus.Gauge
	heldBytes   prometheus.Gauge
	outputDelay prometheus.Histogram
	role        *prometheus.GaugeVec
	refused     *prometheus.CounterVec
	channelTLS  prometheus.Gauge
}

// NewMetrics makes the metrics of one VMM in a registry of their own.
func NewMetrics() *Metrics {
	m := &Metrics{
		reg: prometheus.NewRegistry(),
		heldCount: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ftvm_held_outputs",
			Help: "Outputs the Output Rule holds until the backup acknowledges their log entry."}),
		heldBytes: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ftvm_held_output_bytes",
			Help: "Bytes of held outputs."}),
		outputDelay: prometheus.NewHistogram(prometheus.HistogramOpts{Name: "ftvm_output_delay_seconds",
			Help:    "Time from an output's production to its release under the Output Rule.",
			Buckets: prometheus.ExponentialBuckets(25e-6, 2, 16)}),
		role: prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ftvm_role",
			Help: "1 for this VMM's current role."}, []string{"role"}),
		refused: prometheus.NewCounterVec(prometheus.CounterOpts{Name: "ftvm_logchannel_refused_connections_total",
			Help: "Connections to the backup's logging channel refused in the handshake: reason unauthenticated (no certificate from the pair's CA for this VM, or in clear), or handshake (not ftvm, another image or configuration, silent)."},
			[]string{"reason"}),
		channelTLS: prometheus.NewGauge(prometheus.GaugeOpts{Name: "ftvm_logchannel_tls",
			Help: "1 if the logging channel runs over mutual TLS, 0 if it runs in clear (--insecure-no-tls): unauthenticated and unencrypted."}),
	}
	m.reg.MustRegister(m.heldCount, m.heldBytes, m.outputDelay, m.role, m.refused, m.channelTLS)
	return m
}

func (m *Metrics) held(count, bytes int) {
	if m != nil {
		m.heldCount.Set(float64(count))
		m.heldBytes.Set(float64(bytes))
	}
}

func (m *Metrics) released(delay time.Duration) {
	if m != nil {
		m.outputDelay.Observe(delay.Seconds())
	}
}

// SetBackend records the backend that runs the guest (ftvm_backend_info).
func (m *Metrics) SetBackend(name string) {
	if m == nil {
		return
	}
	g := prometheus.NewGaugeVec(prometheus.GaugeOpts{Name: "ftvm_backend_info",
		Help: "1, labelled with the backend that runs the guest (kvm or ptrace)."}, []string{"backend"})
	if m.reg.Register(g) == nil {
		g.WithLabelValues(name).Set(1)
	}
}

// SetRole marks the VMM's role (primary, backup, live, halted).
func (m *Metrics) SetRole(role string) {
	if m == nil {
		return
	}
	m.role.Reset()
	m.role.WithLabelValues(role).Set(1)
}

// SetChannelTLS records whether the logging channel runs over TLS.
func (m *Metrics) SetChannelTLS(on bool) {
	if m == nil {
		return
	}
	v := 0.0
	if on {
		v = 1
	}
	m.channelTLS.Set(v)
}

// refusedConnection counts a connection the backup refused; unauthenticated
// says whether it failed the TLS check.
func (m *Metrics) refusedConnection(unauthenticated bool) {
	if m == nil {
		return
	}
	reason := "handshake"
	if unauthenticated {
		reason = "unauthenticated"
	}
	m.refused.WithLabelValues(reason).Inc()
}

// counterFunc and gaugeFunc register a metric read from f at scrape time.
func (m *Metrics) counterFunc(name, help string, f func() float64) {
	if m != nil {
		m.reg.MustRegister(prometheus.NewCounterFunc(prometheus.CounterOpts{Name: name, Help: help}, f))
	}
}

func (m *Metrics) gaugeFunc(name, help string, f func() float64) {
	if m != nil {
		m.reg.MustRegister(prometheus.NewGaugeFunc(prometheus.GaugeOpts{Name: name, Help: help}, f))
	}
}

// Serve serves the metrics on addr at /metrics until the listener fails.
// It returns once the listener is bound.
func (m *Metrics) Serve(addr string) (net.Addr, error) {
	ln, err := net.Listen("tcp", addr)
	if err != nil {
		return nil, fmt.Errorf("ft: metrics: %w", err)
	}
	mux := http.NewServeMux()
	mux.Handle("/metrics", promhttp.HandlerFor(m.reg, promhttp.HandlerOpts{}))
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 5 * time.Second}
	go func() {
		if err := srv.Serve(ln); err != nil && !errors.Is(err, http.ErrServerClosed) {
			_ = err // the VM carries on without metrics
		}
	}()
	return ln.Addr(), nil
}

// channelMetrics exports the primary's logging channel statistics.
func (m *Metrics) channelMetrics(stats func() logchannel.Stats) {
	m.counterFunc("ftvm_log_entries_sent_total", "Log entries shipped to the backup.", func() float64 { return float64(stats().Entries) })
	m.counterFunc("ftvm_log_bytes_sent_total", "Log bytes shipped to the backup.", func() float64 { return float64(stats().LogBytes) })
	m.counterFunc("ftvm_acks_total", "Acknowledgements received from the backup.", func() float64 { return float64(stats().Acks) })
	m.gaugeFunc("ftvm_acked_seq", "Highest log seq the backup acknowledged.", func() float64 { return float64(stats().AckedSeq) })
	m.gaugeFunc("ftvm_lag_exits", "How many exits the backup's replay is behind.", func() float64 { return float64(stats().Lag.Exits) })
	m.gaugeFunc("ftvm_lag_seconds", "How long ago the primary was where the backup's replay is.", func() float64 { return stats().Lag.Time.Seconds() })
	m.gaugeFunc("ftvm_heartbeat_rtt_seconds", "Heartbeat round trip to the backup.", func() float64 { return stats().RTT.Seconds() })
}

// receiverMetrics exports the backup's logging channel statistics.
func (m *Metrics) receiverMetrics(stats func() logchannel.Stats) {
	m.counterFunc("ftvm_log_entries_received_total", "Log entries received from the primary.", func() float64 { return float64(stats().Entries) })
	m.counterFunc("ftvm_log_bytes_received_total", "Log bytes received from the primary.", func() float64 { return float64(stats().LogBytes) })
	m.gaugeFunc("ftvm_replayed_exit", "The exit the backup's replay has reached.", func() float64 { return float64(stats().ReplayedExit) })
	m.gaugeFunc("ftvm_primary_released_seq", "The log seq up to which the primary reported every output released.", func() float64 { return float64(stats().PrimaryReleased) })
	m.gaugeFunc("ftvm_queued_bytes", "Received log bytes waiting to be replayed.", func() float64 { return float64(stats().QueuedBytes) })
}
