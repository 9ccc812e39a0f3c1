package loadtest

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/sys/unix"
)

// userHZ is the unit of utime and stime in /proc/PID/stat: USER_HZ, which
// the Linux ABI fixes at 100 whatever the kernel's HZ.
const userHZ = 100

// RSS returns the resident set size of pid in bytes (VmRSS).
func RSS(pid int) (int64, error) { return statusBytes(pid, "VmRSS") }

// RSSFile returns the file-backed part of pid's resident set in bytes
// (RssFile): the binary's code and data pages touched so far.
func RSSFile(pid int) (int64, error) { return statusBytes(pid, "RssFile") }

// statusBytes reads one "kB" field of /proc/PID/status in bytes.
func statusBytes(pid int, field string) (int64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/status")
	if err != nil {
		return 0, fmt.Errorf("loadtest: %w", err)
	}
	for line := range strings.SplitSeq(string(data), "\n") {
		if rest, ok := strings.CutPrefix(line, field+":"); ok {
			f := strings.Fields(rest)
			if len(f) != 2 || f[1] != "kB" {
				return 0, fmt.Errorf("loadtest: odd %s line %q", field, line)
			}
			kb, err := strconv.ParseInt(f[0], 10, 64)
			if err != nil {
				return 0, fmt.Errorf("loadtest: %s: %w", field, err)
			}
			return kb << 10, nil
		}
	}
	return 0, fmt.Errorf("loadtest: no %s for pid %d", field, pid)
}

// OpenFiles counts the descriptors pid holds (/proc/PID/fd).
func OpenFiles(pid int) (int, error) {
	ents, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/fd")
	if err != nil {
		return 0, fmt.Errorf("loadtest: %w", err)
	}
	return len(ents), nil
}

// CPUSeconds returns utime+stime of pid in seconds.
func CPUSeconds(pid int) (float64, error) {
	data, err := os.ReadFile("/proc/" + strconv.Itoa(pid) + "/stat")
	if err != nil {
		return 0, fmt.Errorf("loadtest: %w", err)
	}
	return parseStatCPU(data)
}

// parseStatCPU reads fields 14 and 15 (utime, stime) of a /proc/PID/stat
// line; the command name (field 2) may hold spaces and parentheses, so the
// fields are counted after its last ')'.
func parseStatCPU(stat []byte) (float64, error) {
	ut, st, err := parseStatTimes(stat)
	if err != nil {
		return 0, err
	}
	return float64(ut+st) / userHZ, nil
}

// parseStatTimes is utime and stime of a /proc/PID/stat line, in USER_HZ
// ticks.
func parseStatTimes(stat []byte) (utime, stime uint64, err error) {
	i := bytes.LastIndexByte(stat, ')')
	if i < 0 {
		return 0, 0, fmt.Errorf("loadtest: malformed /proc stat %q", stat)
	}
	f := strings.Fields(string(stat[i+1:]))
	// f[0] is field 3 (state): utime is field 14 = f[11], stime f[12].
	if len(f) < 13 {
		return 0, 0, fmt.Errorf("loadtest: short /proc stat %q", stat)
	}
	ut, err1 := strconv.ParseUint(f[11], 10, 64)
	st, err2 := strconv.ParseUint(f[12], 10, 64)
	if err1 != nil || err2 != nil {
		return 0, 0, fmt.Errorf("loadtest: bad utime/stime in %q", stat)
	}
	return ut, st, nil
}

// RaiseOpenFiles lifts the soft (and, when permitted, the hard) open-files
// limit to want; children such as Prosody and imsidecar inherit it. It
// returns the soft limit in force afterwards.
func RaiseOpenFiles(want uint64) (uint64, error) {
	var lim unix.Rlimit
	if err := unix.Getrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("loadtest: getrlimit: %w", err)
	}
	if lim.Cur >= want {
		return lim.Cur, nil
	}
	if lim.Max < want {
		raised := unix.Rlimit{Cur: want, Max: want}
		if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &raised); err == nil {
			return want, nil
		}
		// Not privileged: go as far as the hard limit.
		want = lim.Max
	}
	lim.Cur = want
	if err := unix.Setrlimit(unix.RLIMIT_NOFILE, &lim); err != nil {
		return 0, fmt.Errorf("loadtest: setrlimit: %w", err)
	}
	return lim.Cur, nil
}

// ProcCounters are the kernel's running totals for one process: its
// context switches (/proc/PID/status: voluntary, i.e. it blocked, for
// Prosody in epoll_wait with nothing to do; involuntary, i.e. the
// scheduler took the CPU from it) and, for its main thread, the time it
// ran and the time it sat runnable waiting for a CPU
// (/proc/PID/schedstat). A process that never blocks through a phase is
// its bottleneck, and then the phase's wall time is its run time plus its
// wait. (/proc/PID/io is no use here: it does not count socket I/O.)
type ProcCounters struct {
	// UserMS and SysMS split the process's CPU time (utime, stime): its
	// own code, and the kernel's work on its behalf (for Prosody the
	// loopback TCP of its sends and reads, the wake-ups of the peers, its
	// epoll calls).
	UserMS   float64 `json:"user_ms"`
	SysMS    float64 `json:"sys_ms"`
	VolCtx   float64 `json:"voluntary_ctx_switches"`
	InvolCtx float64 `json:"involuntary_ctx_switches"`
	RunMS    float64 `json:"run_ms"`
	WaitMS   float64 `json:"runqueue_wait_ms"`
}

// ReadProcCounters samples pid's ProcCounters.
func ReadProcCounters(pid int) (ProcCounters, error) {
	var c ProcCounters
	base := "/proc/" + strconv.Itoa(pid) + "/"
	data, err := os.ReadFile(base + "stat")
	if err != nil {
		return c, fmt.Errorf("loadtest: %w", err)
	}
	ut, st, err := parseStatTimes(data)
	if err != nil {
		return c, err
	}
	c.UserMS, c.SysMS = float64(ut)*1000/userHZ, float64(st)*1000/userHZ
	if data, err = os.ReadFile(base + "status"); err != nil {
		return c, fmt.Errorf("loadtest: %w", err)
	}
	fields := map[string]*float64{"voluntary_ctxt_switches:": &c.VolCtx, "nonvoluntary_ctxt_switches:": &c.InvolCtx}
	for line := range strings.SplitSeq(string(data), "\n") {
		f := strings.Fields(line)
		if len(f) == 2 && fields[f[0]] != nil {
			if *fields[f[0]], err = strconv.ParseFloat(f[1], 64); err != nil {
				return c, fmt.Errorf("loadtest: status %q: %w", line, err)
			}
		}
	}
	if data, err = os.ReadFile(base + "schedstat"); err != nil {
		return c, fmt.Errorf("loadtest: %w", err)
	}
	f := strings.Fields(string(data))
	if len(f) != 3 {
		return c, fmt.Errorf("loadtest: odd schedstat %q", data)
	}
	run, err1 := strconv.ParseFloat(f[0], 64)
	wait, err2 := strconv.ParseFloat(f[1], 64)
	if err1 != nil || err2 != nil {
		return c, fmt.Errorf("loadtest: odd schedstat %q", data)
	}
	c.RunMS, c.WaitMS = run/1e6, wait/1e6
	return c, nil
}

// perUnit is (b - a) / n, field by field.
func (a ProcCounters) perUnit(b ProcCounters, n float64) ProcCounters {
	return ProcCounters{
		UserMS: (b.UserMS - a.UserMS) / n, SysMS: (b.SysMS - a.SysMS) / n,
		VolCtx: (b.VolCtx - a.VolCtx) / n, InvolCtx: (b.InvolCtx - a.InvolCtx) / n,
		RunMS: (b.RunMS - a.RunMS) / n, WaitMS: (b.WaitMS - a.WaitMS) / n,
	}
}

// MachineCPUSeconds is the busy CPU time of the whole machine, every core
// (the first line of /proc/stat: user, nice, system, irq, softirq), and
// the steal time: what the hypervisor gave other guests while this one's
// vCPUs had work.
func MachineCPUSeconds() (busy, steal float64, err error) {
	data, err := os.ReadFile("/proc/stat")
	if err != nil {
		return 0, 0, fmt.Errorf("loadtest: %w", err)
	}
	line, _, _ := strings.Cut(string(data), "\n")
	f := strings.Fields(line)
	if len(f) < 9 || f[0] != "cpu" {
		return 0, 0, fmt.Errorf("loadtest: odd /proc/stat line %q", line)
	}
	for i, v := range f[1:9] { // user nice system idle iowait irq softirq steal
		n, err := strconv.ParseFloat(v, 64)
		if err != nil {
			return 0, 0, fmt.Errorf("loadtest: /proc/stat %q: %w", line, err)
		}
		switch i {
		case 3, 4:
		case 7:
			steal = n / userHZ
		default:
			busy += n / userHZ
		}
	}
	return busy, steal, nil
}

// pinTasks sets the CPU affinity of every thread of pid to cpus; threads
// and children created later inherit it from their creator.
func pinTasks(pid int, cpus []int) error {
	var set unix.CPUSet
	for _, c := range cpus {
		set.Set(c)
	}
	tasks, err := os.ReadDir("/proc/" + strconv.Itoa(pid) + "/task")
	if err != nil {
		return fmt.Errorf("loadtest: %w", err)
	}
	for _, t := range tasks {
		tid, err := strconv.Atoi(t.Name())
		if err != nil {
			continue
		}
		if err := unix.SchedSetaffinity(tid, &set); err != nil && !errors.Is(err, unix.ESRCH) {
			return fmt.Errorf("loadtest: pinning task %d to CPUs %v: %w", tid, cpus, err)
		}
	}
	return nil
}

// splitCPUs is the CPUs of this process's affinity mask: those in
// prosody, and the rest.
func splitCPUs(prosody []int) (rest []int, err error) {
	var set unix.CPUSet
	if err := unix.SchedGetaffinity(0, &set); err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	for _, c := range prosody {
		if c < 0 || c >= 1024 || !set.IsSet(c) {
			return nil, fmt.Errorf("loadtest: -prosody-cpus: CPU %d is not among this process's", c)
		}
	}
	for c := range 1024 {
		if set.IsSet(c) && !slices.Contains(prosody, c) {
			rest = append(rest, c)
		}
	}
	if len(rest) == 0 {
		return nil, errors.New("loadtest: -prosody-cpus leaves no CPU for the generator and imsidecar")
	}
	return rest, nil
}
