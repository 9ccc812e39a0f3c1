package loadtest

import (
	"bufio"
	"fmt"
	"os"
	"path/filepath"
	"runtime/trace"
	"strconv"
)

// DefaultSweepRates is the knee ladder of cmd/imbench, in msg/s.
var DefaultSweepRates = []float64{100, 200, 300, 500, 750, 1000, 1500, 2000, 3000}

// The knee criteria. A phase keeps up with its target rate when nothing
// is lost or fails to send, the sends were started at and the messages
// delivered at KneeRateShare of the rate or more, and the median stays
// within KneeP50ms (no queue builds up); it holds its rate when it keeps
// up and its p99 stays within KneeP99ms as well.
const (
	KneeP99ms     = 50.0
	KneeP50ms     = 50.0
	KneeRateShare = 0.9
)

// Check reads a phase against the knee criteria: whether it kept up,
// whether it held, and what failed first when it did not hold.
func Check(ph Phase) (keptUp, held bool, why string) {
	switch {
	case ph.Sent == 0:
		return false, false, "nothing sent"
	case ph.Lost > 0:
		return false, false, strconv.Itoa(ph.Lost) + " lost"
	case ph.SendErrors > 0:
		return false, false, strconv.Itoa(ph.SendErrors) + " send errors"
	case ph.OfferedPerSec < KneeRateShare*ph.TargetRate:
		// The sends could not even be started at the rate: up to 4,096
		// were in flight, or the generator itself fell behind.
		return false, false, "offered " + f1(ph.OfferedPerSec) + " msg/s"
	case ph.DeliveredPerSec < KneeRateShare*ph.TargetRate:
		return false, false, "delivered " + f1(ph.DeliveredPerSec) + " msg/s"
	case ph.P50ms > KneeP50ms:
		return false, false, "p50 " + f1(ph.P50ms) + " ms > " + f1(KneeP50ms) + " ms"
	case ph.P99ms > KneeP99ms:
		return true, false, "p99 " + f1(ph.P99ms) + " ms > " + f1(KneeP99ms) + " ms"
	}
	return true, true, ""
}

// Knee reads a ladder's steps (ascending rates, each run once or twice,
// up to the first rate that did not keep up). A rate meets a criterion
// when one of its attempts did. For each of the two criteria it gives the
// highest rate met before the first rate that failed it (0 if the first
// failed or there were none), whether a rate failed it (bounded: false
// means the figure is a lower bound) and what failed at that rate (its
// last attempt).
func Knee(steps []Phase) (knee, capacity Limit) {
	kneeDone, capDone := false, false
	for i := 0; i < len(steps); {
		rate := steps[i].TargetRate
		keptUp, held, stop := false, false, ""
		for ; i < len(steps) && steps[i].TargetRate == rate; i++ {
			k, h, why := Check(steps[i])
			keptUp, held = keptUp || k, held || h
			if !h {
				stop = why + " at " + f1(rate) + " msg/s"
			}
		}
		if !kneeDone {
			if held {
				knee.Rate = rate
			} else {
				knee.Bounded, knee.Stop, kneeDone = true, stop, true
			}
		}
		if !capDone {
			if keptUp {
				capacity.Rate = rate
			} else {
				capacity.Bounded, capacity.Stop, capDone = true, stop, true
			}
		}
	}
	return knee, capacity
}

// Limit is one figure of a ladder: the highest rate meeting a criterion
// before the first step that failed it.
type Limit struct {
	Rate    float64
	Bounded bool   // a step failed; false: every step met it, Rate is a lower bound
	Stop    string // what failed, and at which rate
}

// setKnee reads the knee and the capacity from p's ladder.
func (p *PathResult) setKnee() {
	k, c := Knee(p.Sweep)
	p.KneeRate, p.KneeBounded, p.KneeStop = k.Rate, k.Bounded, k.Stop
	p.CapacityRate, p.CapacityBounded, p.CapacityStop = c.Rate, c.Bounded, c.Stop
}

// startTrace starts a runtime/trace of the generator into
// TraceDir/PATH.trace when TraceDir is set; the returned func stops it.
func (r *rig) startTrace() (func(), error) {
	if r.cfg.TraceDir == "" {
		return func() {}, nil
	}
	f, err := os.Create(filepath.Join(r.cfg.TraceDir, r.path+".trace"))
	if err != nil {
		return nil, fmt.Errorf("loadtest: %w", err)
	}
	if err := trace.Start(f); err != nil {
		f.Close()
		return nil, fmt.Errorf("loadtest: trace: %w", err)
	}
	return func() { trace.Stop(); f.Close() }, nil
}

// writeCSV writes one line per message of the phase: sequence, sender and
// receiver index, then the Unix time in microseconds of the send call's
// start, its return and the delivery (-1 when it never came), so the lines
// can be laid beside other logs (Prosody's, strace, perf).
func (t *tracker) writeCSV(name string) error {
	f, err := os.Create(name)
	if err != nil {
		return fmt.Errorf("loadtest: %w", err)
	}
	w := bufio.NewWriter(f)
	fmt.Fprintln(w, "seq,from,to,start_us,sent_us,recv_us")
	us := func(ns int64) int64 {
		if ns == 0 {
			return -1
		}
		return ns / 1000
	}
	for k := range t.start {
		if t.start[k].Load() == 0 {
			break // the phase ended early
		}
		fmt.Fprintf(w, "%d,%d,%d,%d,%d,%d\n", k, t.from[k], t.to[k],
			us(t.start[k].Load()), us(t.sent[k].Load()), us(t.recv[k].Load()))
	}
	if err := w.Flush(); err != nil {
		f.Close()
		return fmt.Errorf("loadtest: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("loadtest: %w", err)
	}
	return nil
}
