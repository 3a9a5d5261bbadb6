//go:build e2e

// Package reload proves the whole story on a real kubelet: k8secrets-job
// injects a Secret into the demo app's Deployment, StatefulSet and DaemonSet,
// and each later Secret update reaches the running app in place through the
// k8secrets-agent sidecar, in signal, HTTP and restart mode. It also proves
// that the agent refuses a broken TLS update and that `remove` restores the
// workloads. Every check is made on the pods themselves: the demo app's own
// view of what it loaded (GET / through the API server's pod proxy), the
// agent's /metrics, the pod's UID and restart counts.
//
// Updates are followed by `k8secrets-job refresh` so that they reach the
// pods in about a second instead of the kubelet's periodic sync (about a
// minute with the default sync period); TestUpdateArrivesWithoutRefresh shows
// that the update also arrives without it.
//
// Environment (make e2e sets it): E2E_IMAGE_TAG, the tag of the
// k8secrets-agent and k8secrets-demo images loaded into the cluster; E2E_BIN,
// the folder holding k8secrets-job (built from ../job into a temporary folder
// when unset).
package reload

import (
	"os"
	"testing"

	"github.com/k8secrets/k8secrets/e2e/framework"
)

func TestMain(m *testing.M) {
	code := framework.Main(m)
	if job.tmp != "" {
		os.RemoveAll(job.tmp)
	}
	os.Exit(code)
}
