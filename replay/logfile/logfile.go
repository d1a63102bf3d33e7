// Package logfile keeps a replay log in a file that is never half-written:
// a recording goes to PATH.incomplete and becomes PATH only when Close has
// written, synced and renamed it (as rr does with its traces). A log that
// was never completed, because the recorder died or failed, stays under the
// temporary name, where nobody mistakes it for a whole recording.
//
// This is the file edge of package replay, which does no I/O itself.
package logfile

import (
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"

	"github.com/ftvm/ftvm/replay"
)

// IncompleteSuffix is appended to the path of a log being written.
const IncompleteSuffix = ".incomplete"

// Writer writes a log to a file; it is a replay.Sink. Not safe for
// concurrent use.
type Writer struct {
	f    *os.File
	enc  *replay.Encoder
	path string
	done bool
}

var _ replay.Sink = (*Writer)(nil)

// Create starts a log that will be at path once closed. It writes to
// path+IncompleteSuffix, and refuses to start if either file exists: an
// existing log is never overwritten, and an existing incomplete one belongs
// to a recording that runs or died (remove it to record again).
func Create(path string) (*Writer, error) {
	if _, err := os.Lstat(path); err == nil {
		return nil, fmt.Errorf("logfile: %s already exists: %w", path, fs.ErrExist)
	} else if !errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("logfile: %w", err)
	}
	tmp := path + IncompleteSuffix
	f, err := os.OpenFile(tmp, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		if errors.Is(err, fs.ErrExist) {
			return nil, fmt.Errorf("logfile: %s exists: a recording to %s is running or died (remove it to record again): %w", tmp, path, err)
		}
		return nil, fmt.Errorf("logfile: %w", err)
	}
	return &Writer{f: f, enc: replay.NewEncoder(f), path: path}, nil
}

// Path is where the log will be once closed.
func (w *Writer) Path() string { return w.path }

// Append adds an entry to the log (replay.Sink).
func (w *Writer) Append(e replay.Entry) error {
	if w.done {
		return fmt.Errorf("logfile: %s is closed", w.path)
	}
	return w.enc.Append(e)
}

// Flush writes the entries appended so far to the file, without syncing
// (replay.Sink).
func (w *Writer) Flush() error {
	if w.done {
		return fmt.Errorf("logfile: %s is closed", w.path)
	}
	return w.enc.Flush()
}

// Sync flushes and makes the entries so far durable, still under the
// temporary name.
func (w *Writer) Sync() error {
	if err := w.Flush(); err != nil {
		return err
	}
	if err := w.f.Sync(); err != nil {
		return fmt.Errorf("logfile: syncing %s: %w", w.f.Name(), err)
	}
	return nil
}

// Bytes returns the number of bytes written to the file so far.
func (w *Writer) Bytes() int64 { return w.enc.Bytes() }

// Close completes the log: it flushes, syncs the file, closes it, renames
// it to Path and syncs the directory, so that once Close returns nil the
// whole log is durable under its name. On error the file stays under the
// temporary name. Closing twice is an error.
func (w *Writer) Close() error {
	if w.done {
		return fmt.Errorf("logfile: %s is already closed", w.path)
	}
	err := w.Sync()
	w.done = true
	if cerr := w.f.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("logfile: %w", cerr)
	}
	if err != nil {
		return err
	}
	// Create refused an existing path; check again, since a rename would
	// replace a log someone wrote there in the meantime.
	if _, err := os.Lstat(w.path); err == nil {
		return fmt.Errorf("logfile: %s appeared while recording; the log stays at %s: %w", w.path, w.f.Name(), fs.ErrExist)
	}
	if err := os.Rename(w.f.Name(), w.path); err != nil {
		return fmt.Errorf("logfile: %w", err)
	}
	return syncDir(filepath.Dir(w.path))
}

// Abort closes the file without completing the log: what was flushed stays
// under the temporary name. For a recording that failed.
func (w *Writer) Abort() error {
	if w.done {
		return nil
	}
	w.done = true
	if err := w.f.Close(); err != nil {
		return fmt.Errorf("logfile: %w", err)
	}
	return nil
}

// syncDir makes a rename in dir durable.
func syncDir(dir string) error {
	d, err := os.Open(dir)
	if err != nil {
		return fmt.Errorf("logfile: %w", err)
	}
	defer d.Close()
	if err := d.Sync(); err != nil {
		return fmt.Errorf("logfile: syncing directory %s: %w", dir, err)
	}
	return nil
}

// Reader reads a log file; it is a replay.Source.
type Reader struct {
	f   *os.File
	dec *replay.Decoder
}

var _ replay.Source = (*Reader)(nil)

// Open opens the log at path. If only path+IncompleteSuffix exists, the
// error says that the recording never completed (pass that name to read
// it anyway).
func Open(path string) (*Reader, error) {
	f, err := os.Open(path)
	if err != nil {
		if errors.Is(err, fs.ErrNotExist) {
			if _, serr := os.Lstat(path + IncompleteSuffix); serr == nil {
				return nil, fmt.Errorf("logfile: %s does not exist, but %s does: that recording never completed: %w",
					path, path+IncompleteSuffix, err)
			}
		}
		return nil, fmt.Errorf("logfile: %w", err)
	}
	return &Reader{f: f, dec: replay.NewDecoder(f)}, nil
}

// Next returns the next entry, io.EOF after the last (replay.Source).
func (r *Reader) Next() (replay.Entry, error) { return r.dec.Next() }

// Bytes returns the number of bytes of the log consumed so far.
func (r *Reader) Bytes() int64 { return r.dec.Bytes() }

// Close closes the file.
func (r *Reader) Close() error { return r.f.Close() }
