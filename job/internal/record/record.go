// Package record tells what the Job did: Kubernetes Events on each workload
// and the final report (a text table, or JSON). Neither ever holds a Secret
// value: only names, hashes and states.
package record

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"log/slog"
	"strings"
	"text/tabwriter"
	"time"

	corev1 "k8s.io/api/core/v1"
	eventsv1 "k8s.io/api/events/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/client-go/kubernetes"

	"github.com/k8secrets/k8secrets/job/internal/workload"
)

// Event reasons.
const (
	ReasonInjected      = "Injected"
	ReasonRemoved       = "Removed"
	ReasonRolloutFailed = "RolloutFailed"
	ReasonRolledBack    = "RolledBack"
	// ReasonChangedByOthers: another field manager changed the pod
	// template while the Job waited; its rollback left that change alone.
	ReasonChangedByOthers = "ChangedByOthers"
)

// Controller is the events' reportingController.
const Controller = "k8secrets.io/job"

// Events writes events.k8s.io/v1 Events. It writes them synchronously, not
// through client-go's asynchronous broadcaster: a one-off Job exits right
// after its last Event, and the broadcaster would drop what it had queued.
type Events struct {
	Client   kubernetes.Interface
	Instance string // this run: the pod name, or the holder identity
	Log      *slog.Logger
}

// Emit records an Event on w. A failure to record is logged, not returned:
// the change itself has been made.
func (e *Events) Emit(ctx context.Context, w workload.Workload, typ, reason, action, note string) {
	m := w.Meta()
	if len(note) > 1024 {
		note = note[:1021] + "..."
	}
	ev := &eventsv1.Event{
		// Named as client-go's recorder names events: object name and time.
		ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("%s.%x", m.GetName(), time.Now().UnixNano()), Namespace: m.GetNamespace()},
		EventTime:  metav1.NewMicroTime(time.Now()),
		Regarding: corev1.ObjectReference{
			APIVersion: "apps/v1", Kind: string(w.Kind()),
			Namespace: m.GetNamespace(), Name: m.GetName(), UID: m.GetUID(),
		},
		ReportingController: Controller,
		ReportingInstance:   e.Instance,
		Action:              action,
		Reason:              reason,
		Type:                typ,
		Note:                note,
	}
	if _, err := e.Client.EventsV1().Events(m.GetNamespace()).Create(ctx, ev, metav1.CreateOptions{}); err != nil {
		e.Log.Warn("record event", "kind", w.Kind(), "namespace", m.GetNamespace(), "name", m.GetName(), "reason", reason, "error", err)
	}
}

// Results of an entry.
const (
	Injected       = "injected"
	Removed        = "removed"
	Unchanged      = "unchanged"
	WouldChange    = "would change"
	Rejected       = "rejected"
	RolledBack     = "rolled back"
	RollbackFailed = "rollback failed"
	NotReached     = "not reached"
	Failed         = "failed"
	// NotOurs: unhealthy for a reason this Job did not cause; left alone.
	NotOurs = "unhealthy, not ours"
)

// Entry is one workload in the report.
type Entry struct {
	Kind      string   `json:"kind"`
	Namespace string   `json:"namespace"`
	Name      string   `json:"name"`
	Pods      int      `json:"matchedPods"`
	Result    string   `json:"result"`
	Detail    string   `json:"detail,omitempty"`
	Secret    string   `json:"secret,omitempty"`
	Hash      string   `json:"injectionHash,omitempty"`
	Rollout   string   `json:"rollout,omitempty"`
	Notes     []string `json:"notes,omitempty"`
	Diff      string   `json:"diff,omitempty"`
	// ChangedBy names the other field managers that changed the pod
	// template during the rollout; a rollback left their changes in place.
	ChangedBy []string `json:"changedBy,omitempty"`
	// Verification (status) says what the workload's pods have loaded.
	Verification *Verification `json:"verification,omitempty"`
}

// Report is the final account of one run.
type Report struct {
	Command   string             `json:"command"`
	Namespace string             `json:"namespace"`
	Secret    string             `json:"secret,omitempty"`
	Selector  string             `json:"selector,omitempty"`
	DryRun    bool               `json:"dryRun,omitempty"`
	Workloads []Entry            `json:"workloads"`
	Skipped   []workload.Skipped `json:"skippedPods,omitempty"`
	Warnings  []string           `json:"warnings,omitempty"`
	Error     string             `json:"error,omitempty"`
	ExitCode  int                `json:"exitCode"`

	// Verification (refresh --wait) says what the Secret's pods have loaded.
	Verification *Verification `json:"verification,omitempty"`
}

// Write prints the report as "text" or "json".
func (r Report) Write(out io.Writer, format string) error {
	if r.Workloads == nil {
		r.Workloads = []Entry{}
	}
	if format == "json" {
		enc := json.NewEncoder(out)
		enc.SetIndent("", "  ")
		return enc.Encode(r)
	}
	var b strings.Builder
	if len(r.Workloads) > 0 {
		tw := tabwriter.NewWriter(&b, 0, 4, 2, ' ', 0)
		fmt.Fprintln(tw, "KIND\tNAMESPACE\tNAME\tPODS\tSECRET\tHASH\tRESULT\tDETAIL")
		for _, e := range r.Workloads {
			fmt.Fprintf(tw, "%s\t%s\t%s\t%d\t%s\t%s\t%s\t%s\n", e.Kind, e.Namespace, e.Name, e.Pods, dash(e.Secret), dash(e.Hash), e.Result, firstNonEmpty(e.Detail, e.Rollout))
		}
		tw.Flush()
	}
	writeVerifications(&b, r)
	for _, e := range r.Workloads {
		for _, n := range e.Notes {
			fmt.Fprintf(&b, "note: %s %s/%s: %s\n", e.Kind, e.Namespace, e.Name, n)
		}
	}
	for _, s := range r.Skipped {
		owner := ""
		if s.Owner != "" {
			owner = " (" + s.Owner + ")"
		}
		fmt.Fprintf(&b, "skipped pod %s%s: %s\n", s.Pod, owner, s.Reason)
	}
	for _, w := range r.Warnings {
		fmt.Fprintf(&b, "warning: %s\n", w)
	}
	for _, e := range r.Workloads {
		if e.Diff != "" {
			fmt.Fprintf(&b, "\n%s %s/%s: pod template change (server-side dry-run):\n%s", e.Kind, e.Namespace, e.Name, e.Diff)
		}
	}
	_, err := io.WriteString(out, b.String())
	return err
}

func dash(s string) string {
	if s == "" {
		return "-"
	}
	return s
}

func firstNonEmpty(a, b string) string {
	if a != "" {
		return a
	}
	return b
}
