package record

import (
	"fmt"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/k8secrets/k8secrets/job/internal/verify"
)

// Verification is what pods have loaded of a Secret, as their agents say:
// those of one workload (status) or every pod that mounts the Secret
// (refresh --wait).
type Verification struct {
	// Via is how the agents were asked: direct or proxy.
	Via     string `json:"via"`
	Current int    `json:"current"`
	Total   int    `json:"total"`
	// Pods are listed one by one, current or not.
	Pods []verify.Pod `json:"pods"`
	// Error says why the pods could not all be verified.
	Error string `json:"error,omitempty"`
}

// writeVerifications prints each verification as a block of pods under the
// table.
func writeVerifications(b *strings.Builder, r Report) {
	for _, e := range r.Workloads {
		if v := e.Verification; v != nil {
			writeVerification(b, fmt.Sprintf("%s %s/%s (secret %s)", e.Kind, e.Namespace, e.Name, e.Secret), v)
		}
	}
	if v := r.Verification; v != nil {
		writeVerification(b, fmt.Sprintf("pods mounting secret %s/%s", r.Namespace, r.Secret), v)
	}
}

func writeVerification(b *strings.Builder, title string, v *Verification) {
	fmt.Fprintf(b, "\n%s: %d/%d pods run the current content (asked via %s)\n", title, v.Current, v.Total, v.Via)
	if v.Error != "" {
		fmt.Fprintf(b, "  not verified: %s\n", v.Error)
	}
	if len(v.Pods) == 0 {
		return
	}
	tw := tabwriter.NewWriter(b, 0, 4, 2, ' ', 0)
	fmt.Fprintln(tw, "  POD\tSTATE\tDETAIL")
	for _, p := range v.Pods {
		detail := p.Reason
		if p.State == verify.Current {
			detail = "loaded " + short(p.Loaded)
			if !p.LoadedAt.IsZero() {
				detail += " at " + p.LoadedAt.UTC().Format(time.RFC3339)
			}
		}
		fmt.Fprintf(tw, "  %s\t%s\t%s\n", p.Name, p.State, detail)
	}
	tw.Flush()
}

// short abbreviates a content identifier as git does a commit.
func short(id string) string {
	if len(id) > 12 {
		return id[:12]
	}
	return id
}
