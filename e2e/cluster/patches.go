package cluster

import "context"

// CreateWithPatches is Create with extra kubeadm config patches appended to
// the cluster's own (kind merges each into the kubeadm document of the same
// kind). The scale benchmark raises the controller-manager's and the
// scheduler's client QPS this way: at the default 20 QPS, replacing 10,000
// pods takes the controller-manager most of an hour.
func CreateWithPatches(ctx context.Context, o Options, patches ...string) error {
	o.KubeadmPatches = append(append([]string(nil), o.KubeadmPatches...), patches...)
	return Create(ctx, o)
}
