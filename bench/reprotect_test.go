package bench

import "testing"

// TestReprotectParse: the figures of each re-protection come from a LIVE
// line and the PROTECTED line after it; a PROTECTED line with no LIVE
// before it (a join after the backup died, not after a failover) counts
// nothing, and too few figures are an error.
func TestReprotectParse(t *testing.T) {
	log := `ftvm backup 10:00:00.000: backup: LIVE since 2026-12-03T10:00:00.000000000Z (won the arbiter in epoch 1; the guest continues from exit 4)
ftvm backup 10:00:00.100: primary: PROTECTED again at 2026-12-03T10:00:00.250000000Z: the backup from 127.0.0.1:1 joined at log seq 9, epoch 2 (193 KiB sent in 1 rounds, 3ms in all; the guest paused 189µs)
ftvm backup 10:00:01.000: primary: PROTECTED again at 2026-12-03T10:00:01.000000000Z: the backup from 127.0.0.1:2 joined at log seq 99, epoch 3 (1 bytes sent in 1 rounds, 1ms in all; the guest paused 1ms)
ftvm backup 10:00:02.000: backup: LIVE since 2026-12-03T10:00:02.000000000Z (won the arbiter in epoch 3; the guest continues from exit 40)
ftvm backup 10:00:02.500: primary: PROTECTED again at 2026-12-03T10:00:02.500000000Z: the backup from 127.0.0.1:3 joined at log seq 200, epoch 4 (1.5 MiB sent in 3 rounds, 40ms in all; the guest paused 2.5ms)
`
	row := ReprotectRow{Failovers: 2}
	if err := row.parse(log); err != nil {
		t.Fatal(err)
	}
	if len(row.Unprotected) != 2 || row.Unprotected[0] != 250 || row.Unprotected[1] != 500 {
		t.Fatalf("unprotected %v, want [250 500]", row.Unprotected)
	}
	if row.Pause[0] != 0.189 || row.Pause[1] != 2.5 || row.Transfer[1] != 40 || row.SentMiB[1] != 1.5 || row.SentMiB[0] != 193.0/1024 {
		t.Fatalf("pause %v, transfer %v, sent %v", row.Pause, row.Transfer, row.SentMiB)
	}
	if row.UnprotectedMax != 500 || row.PauseMax != 2.5 {
		t.Fatalf("maxima %v %v", row.UnprotectedMax, row.PauseMax)
	}
	short := ReprotectRow{Failovers: 3}
	if err := short.parse(log); err == nil {
		t.Fatal("two re-protections were accepted as three")
	}
}
