package bench

import "testing"

// redis-benchmark 7's --csv output, as Debian's redis-tools prints it.
func TestParseRedisBenchCSV(t *testing.T) {
	out := `"test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
"SET","17482.52","2.745","0.256","1.423","6.447","9.687","208.511"
"GET","20325.20","2.319","0.224","1.271","5.215","8.583","14.255"
`
	res, err := parseRedisBenchCSV(out)
	if err != nil {
		t.Fatal(err)
	}
	if got := res["SET"]; got != (redisBenchFigures{rps: 17482.52, p50: 1.423, p99: 9.687}) {
		t.Errorf("SET: %+v", got)
	}
	if got := res["GET"]; got != (redisBenchFigures{rps: 20325.20, p50: 1.271, p99: 8.583}) {
		t.Errorf("GET: %+v", got)
	}
	if _, err := parseRedisBenchCSV(`"test","rps"` + "\n" + `"SET","1"` + "\n"); err == nil {
		t.Error("no latency columns: no error")
	}
}
