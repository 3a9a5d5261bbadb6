package cluster

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"time"

	kind "sigs.k8s.io/kind/pkg/cluster"
)

// CreateWithPatches is Create with extra kubeadm config patches appended to
// the cluster's own (kind merges each into the kubeadm document of the same
// kind). The scale benchmark raises the controller-manager's and the
// scheduler's client QPS this way: at the default 20 QPS, replacing 10,000
// pods takes the controller-manager most of an hour.
func CreateWithPatches(ctx context.Context, o Options, patches ...string) error {
	o.defaults()
	image, err := nodeImage(o)
	if err != nil {
		return err
	}
	p, err := provider(o)
	if err != nil {
		return err
	}
	if err := os.MkdirAll(filepath.Dir(o.Kubeconfig), 0o755); err != nil {
		return fmt.Errorf("create cluster %s: %w", o.Name, err)
	}
	o.Logger.Info("creating kind cluster", "name", o.Name, "image", image, "kubeconfig", o.Kubeconfig, "patches", len(patches))
	start := time.Now()
	if !dockerNetworkExists(kindNetwork) {
		if err := os.WriteFile(networkMarker(o), []byte(kindNetwork+"\n"), 0o644); err != nil {
			return fmt.Errorf("create cluster %s: %w", o.Name, err)
		}
	}
	cfg := config(o, image)
	cfg.KubeadmConfigPatches = append(cfg.KubeadmConfigPatches, patches...)
	err = p.Create(o.Name,
		kind.CreateWithV1Alpha4Config(cfg),
		kind.CreateWithKubeconfigPath(o.Kubeconfig),
		kind.CreateWithWaitForReady(2*time.Minute),
		kind.CreateWithRetain(true),
		kind.CreateWithDisplayUsage(false),
		kind.CreateWithDisplaySalutation(false),
	)
	if err == nil {
		err = WaitReady(ctx, o.Kubeconfig, 2*time.Minute)
	}
	if err != nil {
		logs := filepath.Join(o.CacheDir, "kind-logs", time.Now().UTC().Format("20060102T150405Z"))
		if cerr := p.CollectLogs(o.Name, logs); cerr != nil {
			logs = "(collecting logs failed: " + cerr.Error() + ")"
		}
		if derr := p.Delete(o.Name, o.Kubeconfig); derr != nil {
			o.Logger.Warn("delete failed cluster", "name", o.Name, "err", derr)
		}
		os.Remove(o.Kubeconfig)
		return fmt.Errorf("create cluster %s: %w; node logs in %s", o.Name, err, logs)
	}
	o.Logger.Info("cluster ready", "name", o.Name, "seconds", time.Since(start).Seconds())
	return nil
}
