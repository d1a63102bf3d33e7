// Package bench holds ftvm's benchmarks: plain runs against FT runs side by
// side, exit costs, logging bandwidth, output delay and failover time.
// Run them with `make bench` or `go test -bench . ./bench/...`.
package bench
