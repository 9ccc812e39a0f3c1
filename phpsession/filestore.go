package phpsession

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"golang.org/x/sys/unix"
)

// FileOptions configure a FileStore.
type FileOptions struct {
	// Owner is the uid session files must belong to; -1 means the uid of
	// this process (PHP and the sidecar both run as www-data).
	Owner int
	// MaxSize is the largest session file read (default 8 MiB).
	MaxSize int64
	// LockWait bounds how long Load keeps retrying while PHP holds the
	// file's lock and the contents keep changing (default 250 ms).
	LockWait time.Duration
}

// FileStore reads sessions written by PHP's "files" save handler. It opens
// files read-only and never creates, locks exclusively or modifies anything.
//
// Consistency: PHP holds an exclusive flock on sess_<id> for the whole
// request and, at its end, truncates and rewrites the file. PHP code may
// well call the sidecar while holding that lock, so Load never blocks on it.
// It first tries a shared lock without waiting; when that succeeds no writer
// can be active and the read is consistent. When PHP holds the lock, Load
// reads optimistically: it takes fstat before and after reading and accepts
// the bytes only when the file is not empty, size, mtime and ctime are
// unchanged, the byte count equals the size, and the file has not been
// modified for quietPeriod. Such a read is marked Record.Unlocked.
//
// An optimistic read is not proof of a whole session. PHP writes at the end
// of a request in two system calls, ftruncate(fd, 0) then pwrite, and
// between them the file is empty, its mtime that of the truncate, for as
// long as PHP happens not to be scheduled: tens of milliseconds on a busy
// machine, so no quiet period can tell that gap from a quiet file. An empty
// file PHP holds locked is therefore never accepted (retried, then
// ErrUnavailable), and the Reader never turns a failed decode of an
// Unlocked record into a verdict (see Reader.Lookup). If the file keeps
// changing for LockWait, Load fails closed with ErrUnavailable.
type FileStore struct {
	dir    string
	levels int
	opt    FileOptions
}

// NewFileStore parses PHP's session.save_path syntax: "/dir", "N;/dir" or
// "N;MODE;/dir", where N levels of subdirectories are named by the first N
// characters of the id.
func NewFileStore(savePath string, opt FileOptions) (*FileStore, error) {
	parts := strings.Split(savePath, ";")
	var dir string
	levels := 0
	switch len(parts) {
	case 1:
		dir = parts[0]
	case 2, 3:
		n, err := strconv.Atoi(parts[0])
		if err != nil || n < 0 || n > 16 {
			return nil, fmt.Errorf("%w: save path %q: bad directory depth", ErrConfig, savePath)
		}
		levels = n
		dir = parts[len(parts)-1]
	default:
		return nil, fmt.Errorf("%w: save path %q", ErrConfig, savePath)
	}
	if dir == "" || !filepath.IsAbs(dir) {
		return nil, fmt.Errorf("%w: save path %q must be an absolute directory", ErrConfig, savePath)
	}
	if opt.Owner < 0 {
		opt.Owner = os.Getuid()
	}
	if opt.MaxSize <= 0 {
		opt.MaxSize = int64(DefaultLimits.MaxBytes)
	}
	if opt.LockWait <= 0 {
		opt.LockWait = 250 * time.Millisecond
	}
	return &FileStore{dir: filepath.Clean(dir), levels: levels, opt: opt}, nil
}

// Path returns the file a session id maps to. The id must be valid.
func (s *FileStore) Path(id string) string {
	// Built by hand, not with filepath.Join: this runs on every API call,
	// the directory is already clean and a valid id holds no separator.
	b := make([]byte, 0, len(s.dir)+2*s.levels+6+len(id))
	b = append(b, s.dir...)
	if s.dir != "/" {
		b = append(b, '/')
	}
	for i := 0; i < s.levels && i < len(id); i++ {
		b = append(b, id[i], '/')
	}
	b = append(b, "sess_"...)
	b = append(b, id...)
	return string(b)
}

// Dir is the session directory (without the depth prefix of the save path).
func (s *FileStore) Dir() string { return s.dir }

// HasSessions reports whether the session directory (and, with N levels,
// its subdirectories) holds at least one sess_* file; it stops at the first
// and looks at no more than 100,000 entries. An empty directory usually
// means PHP writes elsewhere, or that this process sees another mount
// namespace (systemd PrivateTmp= or PrivateDevices=).
func (s *FileStore) HasSessions() (bool, error) {
	budget := 100_000
	var walk func(dir string, depth int) (bool, error)
	walk = func(dir string, depth int) (bool, error) {
		f, err := os.Open(dir)
		if err != nil {
			return false, err
		}
		defer f.Close()
		for budget > 0 {
			ents, err := f.ReadDir(1024)
			for _, e := range ents {
				budget--
				switch {
				case depth == s.levels && strings.HasPrefix(e.Name(), "sess_") && e.Type().IsRegular():
					return true, nil
				case depth < s.levels && e.IsDir() && len(e.Name()) == 1:
					if ok, err := walk(filepath.Join(dir, e.Name()), depth+1); ok || err != nil {
						return ok, err
					}
				}
			}
			if errors.Is(err, io.EOF) || len(ents) == 0 {
				return false, nil
			}
			if err != nil {
				return false, err
			}
		}
		return false, nil
	}
	return walk(s.dir, 0)
}

// Close does nothing: a FileStore holds no open files between calls.
func (s *FileStore) Close() error { return nil }

// Ready reports whether the session directory can be read.
func (s *FileStore) Ready(context.Context) error {
	st, err := os.Stat(s.dir)
	if err != nil {
		return fmt.Errorf("%w: %w", ErrUnavailable, err)
	}
	if !st.IsDir() {
		return fmt.Errorf("%w: %s is not a directory", ErrUnavailable, s.dir)
	}
	return nil
}

// version names a file's identity and last change (device, inode, size,
// mtime, ctime) in hex; it is computed on every cached lookup, so with
// strconv into a stack buffer rather than fmt.
func version(st *unix.Stat_t) string {
	var buf [7 * 17]byte
	b := buf[:0]
	for i, n := range [...]uint64{uint64(st.Dev), uint64(st.Ino), uint64(st.Size), uint64(st.Mtim.Sec), uint64(st.Mtim.Nsec),
		uint64(st.Ctim.Sec), uint64(st.Ctim.Nsec)} {
		if i > 0 {
			b = append(b, " :::.:."[i])
		}
		b = strconv.AppendUint(b, n, 16)
	}
	return string(b)
}

// open validates the id and opens its file without following symlinks,
// accepting only a regular file owned by the expected uid.
func (s *FileStore) open(id string) (*os.File, *unix.Stat_t, error) {
	if err := ValidateID(id, 1); err != nil {
		return nil, nil, err
	}
	fd, err := unix.Open(s.Path(id), unix.O_RDONLY|unix.O_NOFOLLOW|unix.O_CLOEXEC|unix.O_NONBLOCK, 0)
	if err != nil {
		switch {
		case errors.Is(err, unix.ENOENT), errors.Is(err, unix.ELOOP), errors.Is(err, unix.ENOTDIR):
			return nil, nil, ErrNotFound
		case errors.Is(err, unix.EACCES):
			return nil, nil, fmt.Errorf("%w: permission denied", ErrNotFound)
		}
		return nil, nil, fmt.Errorf("%w: open: %w", ErrUnavailable, err)
	}
	f := os.NewFile(uintptr(fd), "sess")
	var st unix.Stat_t
	if err := unix.Fstat(fd, &st); err != nil {
		f.Close()
		return nil, nil, fmt.Errorf("%w: fstat: %w", ErrUnavailable, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG {
		f.Close()
		return nil, nil, fmt.Errorf("%w: not a regular file", ErrNotFound)
	}
	if int(st.Uid) != s.opt.Owner {
		f.Close()
		return nil, nil, fmt.Errorf("%w: file owned by uid %d, want %d", ErrNotFound, st.Uid, s.opt.Owner)
	}
	if st.Size > s.opt.MaxSize {
		f.Close()
		return nil, nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, st.Size, s.opt.MaxSize)
	}
	return f, &st, nil
}

// Stat returns the session's current version without opening the file:
// one lstat, which does not follow symlinks, with the same checks as open.
func (s *FileStore) Stat(_ context.Context, id string) (string, error) {
	if err := ValidateID(id, 1); err != nil {
		return "", err
	}
	var st unix.Stat_t
	if err := unix.Lstat(s.Path(id), &st); err != nil {
		if errors.Is(err, unix.ENOENT) || errors.Is(err, unix.ENOTDIR) {
			return "", ErrNotFound
		}
		return "", fmt.Errorf("%w: lstat: %w", ErrUnavailable, err)
	}
	if st.Mode&unix.S_IFMT != unix.S_IFREG || int(st.Uid) != s.opt.Owner {
		return "", fmt.Errorf("%w: not a regular file of uid %d", ErrNotFound, s.opt.Owner)
	}
	return version(&st), nil
}

// Load reads the session file. See FileStore for the consistency rules.
func (s *FileStore) Load(ctx context.Context, id string) (Record, error) {
	f, st, err := s.open(id)
	if err != nil {
		return Record{}, err
	}
	defer f.Close()
	fd := int(f.Fd())
	deadline := time.Now().Add(s.opt.LockWait)
	wait := 2 * time.Millisecond
	for {
		rec, ok, err := s.tryLocked(f, fd, st)
		if err != nil || ok {
			return rec, err
		}
		rec, ok, err = s.tryOptimistic(f, fd)
		if err != nil || ok {
			return rec, err
		}
		if time.Now().After(deadline) {
			return Record{}, fmt.Errorf("%w: session file kept changing while PHP held its lock", ErrUnavailable)
		}
		select {
		case <-ctx.Done():
			return Record{}, fmt.Errorf("%w: %w", ErrUnavailable, ctx.Err())
		case <-time.After(wait):
		}
		wait = min(2*wait, 20*time.Millisecond)
	}
}

// tryLocked reads under a shared lock if PHP does not hold its exclusive
// one; ok is false when the lock is taken.
func (s *FileStore) tryLocked(f *os.File, fd int, st *unix.Stat_t) (Record, bool, error) {
	if err := unix.Flock(fd, unix.LOCK_SH|unix.LOCK_NB); err != nil {
		if errors.Is(err, unix.EWOULDBLOCK) {
			return Record{}, false, nil
		}
		return Record{}, false, fmt.Errorf("%w: flock: %w", ErrUnavailable, err)
	}
	defer unix.Flock(fd, unix.LOCK_UN)
	// Re-stat under the lock: a writer may have finished just before.
	if err := unix.Fstat(fd, st); err != nil {
		return Record{}, false, fmt.Errorf("%w: fstat: %w", ErrUnavailable, err)
	}
	data, err := readAt(f, st.Size, s.opt.MaxSize)
	if err != nil {
		return Record{}, false, err
	}
	return record(data, st), true, nil
}

// tryOptimistic reads without the lock and accepts the bytes only when the
// file provably did not change while it was read (see FileStore).
func (s *FileStore) tryOptimistic(f *os.File, fd int) (Record, bool, error) {
	var before, after unix.Stat_t
	if err := unix.Fstat(fd, &before); err != nil {
		return Record{}, false, fmt.Errorf("%w: fstat: %w", ErrUnavailable, err)
	}
	data, err := readAt(f, before.Size, s.opt.MaxSize)
	if errors.Is(err, errShortRead) {
		return Record{}, false, nil
	}
	if err != nil {
		return Record{}, false, err
	}
	if err := unix.Fstat(fd, &after); err != nil {
		return Record{}, false, fmt.Errorf("%w: fstat: %w", ErrUnavailable, err)
	}
	// File timestamps tick with the kernel's coarse clock (a few ms), so a
	// write in progress can leave them unchanged across our read: only a
	// file that has been quiet for longer than that is trusted.
	quiet := time.Since(time.Unix(after.Mtim.Sec, after.Mtim.Nsec)) > quietPeriod &&
		time.Since(time.Unix(after.Ctim.Sec, after.Ctim.Nsec)) > quietPeriod
	// An empty file PHP holds locked is PHP between its truncate and its
	// write (or a session created this request): never a session to trust.
	if quiet && after.Size > 0 && int64(len(data)) == after.Size && before.Size == after.Size && before.Mtim == after.Mtim && before.Ctim == after.Ctim {
		rec := record(data, &after)
		rec.Unlocked = true
		return rec, true, nil
	}
	return Record{}, false, nil
}

var errShortRead = errors.New("phpsession: short read")

// quietPeriod is how long a session file must have been untouched before
// Load trusts a read taken while PHP holds the lock: longer than the
// coarse-clock tick that file timestamps use (1-10 ms).
const quietPeriod = 20 * time.Millisecond

// readAt reads exactly size bytes from the start, or reports errShortRead
// when the file changed size underneath.
func readAt(f *os.File, size, limit int64) ([]byte, error) {
	if size > limit {
		return nil, fmt.Errorf("%w: %d bytes, limit %d", ErrTooLarge, size, limit)
	}
	buf := make([]byte, size+1)
	n, err := f.ReadAt(buf, 0)
	if err != nil && err != io.EOF {
		return nil, fmt.Errorf("%w: read: %w", ErrUnavailable, err)
	}
	if int64(n) != size {
		return nil, errShortRead
	}
	return buf[:n:n], nil
}

func record(data []byte, st *unix.Stat_t) Record {
	return Record{
		Data:    data,
		ModTime: time.Unix(st.Mtim.Sec, st.Mtim.Nsec),
		Version: version(st),
	}
}
