// Package kube builds Kubernetes clients the way kubectl does: from
// --kubeconfig / KUBECONFIG and --context, falling back to the in-cluster
// service account, and routes client-go's klog output into slog.
package kube

import (
	"fmt"
	"log/slog"

	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/clientcmd"
	clientcmdapi "k8s.io/client-go/tools/clientcmd/api"
	"k8s.io/klog/v2"

	"github.com/k8secrets/k8secrets/internal/version"
)

// Options select the cluster and user, as kubectl's flags of the same names.
type Options struct {
	Kubeconfig string
	Context    string
	// Cluster and User override the context's, as kubectl's --cluster
	// and --user.
	Cluster string
	User    string
	// UserAgent names the program in the API server's audit log.
	UserAgent string
	// QPS and Burst bound client-side throttling; zero keeps client-go's
	// defaults.
	QPS   float32
	Burst int
}

// Config returns the REST config and the namespace of the selected context
// (in a pod: the pod's namespace; with no namespace set anywhere: "default").
func Config(o Options) (*rest.Config, string, error) {
	rules := clientcmd.NewDefaultClientConfigLoadingRules()
	if o.Kubeconfig != "" {
		rules.ExplicitPath = o.Kubeconfig
	}
	cc := clientcmd.NewNonInteractiveDeferredLoadingClientConfig(rules,
		&clientcmd.ConfigOverrides{CurrentContext: o.Context, Context: clientcmdapi.Context{Cluster: o.Cluster, AuthInfo: o.User}})
	cfg, err := cc.ClientConfig()
	if err != nil {
		return nil, "", fmt.Errorf("load kubeconfig: %w; pass --kubeconfig or set KUBECONFIG, or run in a pod with a service account", err)
	}
	ns, _, err := cc.Namespace()
	if err != nil {
		return nil, "", fmt.Errorf("namespace of the current context: %w", err)
	}
	ua := o.UserAgent
	if ua == "" {
		ua = "k8secrets"
	}
	cfg.UserAgent = ua + "/" + version.Version
	if o.QPS > 0 {
		cfg.QPS = o.QPS
	}
	if o.Burst > 0 {
		cfg.Burst = o.Burst
	}
	return cfg, ns, nil
}

// Client builds a clientset for cfg.
func Client(cfg *rest.Config) (kubernetes.Interface, error) {
	c, err := kubernetes.NewForConfig(cfg)
	if err != nil {
		return nil, fmt.Errorf("build client for %s: %w", cfg.Host, err)
	}
	return c, nil
}

// RouteKlog sends client-go's own log lines (throttling, retries, warnings)
// to logger instead of stderr, so every line has one format.
func RouteKlog(logger *slog.Logger) {
	klog.SetSlogLogger(logger)
}
