package workload

import (
	"context"
	"fmt"
	"sync"

	appsv1 "k8s.io/api/apps/v1"
	corev1 "k8s.io/api/core/v1"
	apierrors "k8s.io/apimachinery/pkg/api/errors"
	"k8s.io/apimachinery/pkg/runtime"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	appslisters "k8s.io/client-go/listers/apps/v1"
	"k8s.io/client-go/tools/cache"
)

// Cache keeps the namespace's Deployments, StatefulSets, DaemonSets and
// ReplicaSets in informers: one list and one watch per kind, whatever the
// number of workloads, so resolving owners and waiting for rollouts cost no
// request per workload and waiting never polls.
type Cache struct {
	factory informers.SharedInformerFactory
	rs      appslisters.ReplicaSetNamespaceLister
	deploy  appslisters.DeploymentNamespaceLister
	sts     appslisters.StatefulSetNamespaceLister
	ds      appslisters.DaemonSetNamespaceLister

	mu   sync.Mutex
	subs map[string]map[chan struct{}]struct{}
	// denied receives the first refusal (403) of an informer's list or
	// watch: the reflector would retry it forever.
	denied chan error
}

// NewCache sets up the informers; Start fills them.
func NewCache(client kubernetes.Interface, namespace string) *Cache {
	f := informers.NewSharedInformerFactoryWithOptions(client, 0, informers.WithNamespace(namespace))
	c := &Cache{factory: f, subs: map[string]map[chan struct{}]struct{}{}, denied: make(chan error, 1)}
	apps := f.Apps().V1()

	rsInf := apps.ReplicaSets().Informer()
	// Only owner references are read from ReplicaSets: drop the rest to keep
	// memory flat with thousands of them.
	_ = rsInf.SetTransform(func(obj any) (any, error) {
		if rs, ok := obj.(*appsv1.ReplicaSet); ok {
			rs.Spec.Template = corev1.PodTemplateSpec{}
			rs.ManagedFields = nil
			rs.Annotations = nil
		}
		return obj, nil
	})
	onError := func(r *cache.Reflector, err error) {
		if apierrors.IsForbidden(err) {
			select {
			case c.denied <- err:
			default:
			}
		}
		cache.DefaultWatchErrorHandler(context.Background(), r, err)
	}
	for _, inf := range []cache.SharedIndexInformer{rsInf, apps.Deployments().Informer(), apps.StatefulSets().Informer(), apps.DaemonSets().Informer()} {
		_ = inf.SetWatchErrorHandlerWithContext(func(_ context.Context, r *cache.Reflector, err error) { onError(r, err) })
	}
	c.rs = apps.ReplicaSets().Lister().ReplicaSets(namespace)
	c.deploy = apps.Deployments().Lister().Deployments(namespace)
	c.sts = apps.StatefulSets().Lister().StatefulSets(namespace)
	c.ds = apps.DaemonSets().Lister().DaemonSets(namespace)
	for kind, inf := range map[Kind]cache.SharedIndexInformer{
		Deployment:  apps.Deployments().Informer(),
		StatefulSet: apps.StatefulSets().Informer(),
		DaemonSet:   apps.DaemonSets().Informer(),
	} {
		_, _ = inf.AddEventHandler(cache.ResourceEventHandlerFuncs{
			AddFunc:    func(obj any) { c.notify(kind, obj) },
			UpdateFunc: func(_, obj any) { c.notify(kind, obj) },
			DeleteFunc: func(obj any) {
				if d, ok := obj.(cache.DeletedFinalStateUnknown); ok {
					obj = d.Obj
				}
				c.notify(kind, obj)
			},
		})
	}
	return c
}

// Start runs the informers until run ends and waits, at most until wait
// ends, for their first list. A list or watch refused by RBAC ends the wait
// at once with that error.
func (c *Cache) Start(run, wait context.Context) error {
	c.factory.Start(run.Done())
	wait, cancel := context.WithCancelCause(wait)
	defer cancel(nil)
	go func() {
		select {
		case err := <-c.denied:
			cancel(err)
		case <-wait.Done():
		}
	}()
	for typ, ok := range c.factory.WaitForCacheSync(wait.Done()) {
		if !ok {
			return fmt.Errorf("list and watch %v: cache did not sync: %w", typ, context.Cause(wait))
		}
	}
	return nil
}

// Shutdown stops the informers and waits for their goroutines.
func (c *Cache) Shutdown() { c.factory.Shutdown() }

// ReplicaSet implements Getter.
func (c *Cache) ReplicaSet(name string) (*appsv1.ReplicaSet, error) { return c.rs.Get(name) }

// Get implements Getter: the cached object, not to be changed.
func (c *Cache) Get(kind Kind, name string) (runtime.Object, error) {
	switch kind {
	case Deployment:
		return c.deploy.Get(name)
	case StatefulSet:
		return c.sts.Get(name)
	case DaemonSet:
		return c.ds.Get(name)
	}
	return nil, fmt.Errorf("unsupported kind %q", kind)
}

// Subscribe returns a channel that receives a value (coalesced) whenever the
// named workload changes, and a function that ends the subscription.
func (c *Cache) Subscribe(kind Kind, name string) (<-chan struct{}, func()) {
	ch := make(chan struct{}, 1)
	k := string(kind) + "/" + name
	c.mu.Lock()
	if c.subs[k] == nil {
		c.subs[k] = map[chan struct{}]struct{}{}
	}
	c.subs[k][ch] = struct{}{}
	c.mu.Unlock()
	return ch, func() {
		c.mu.Lock()
		delete(c.subs[k], ch)
		if len(c.subs[k]) == 0 {
			delete(c.subs, k)
		}
		c.mu.Unlock()
	}
}

func (c *Cache) notify(kind Kind, obj any) {
	m, ok := obj.(interface{ GetName() string })
	if !ok {
		return
	}
	k := string(kind) + "/" + m.GetName()
	c.mu.Lock()
	defer c.mu.Unlock()
	for ch := range c.subs[k] {
		select {
		case ch <- struct{}{}:
		default:
		}
	}
}

// Sync waits until the cache holds the named workload at generation gen or
// later: right after a write the informer may still hold the old object,
// whose status would describe the previous generation.
func (c *Cache) Sync(ctx context.Context, kind Kind, name string, gen int64) error {
	_, err := c.until(ctx, kind, name, func(obj runtime.Object) bool { return meta(obj).GetGeneration() >= gen })
	if err != nil {
		return fmt.Errorf("watch %s %s: generation %d not seen: %w", kind, name, gen, err)
	}
	return nil
}

// Observed waits until the workload's controller has observed generation gen
// (its status describes it) and returns the object.
func (c *Cache) Observed(ctx context.Context, kind Kind, name string, gen int64) (runtime.Object, error) {
	obj, err := c.until(ctx, kind, name, func(obj runtime.Object) bool { return ObservedGeneration(obj) >= gen })
	if err != nil {
		return nil, fmt.Errorf("%s %s: its controller has not observed generation %d: %w", kind, name, gen, err)
	}
	return obj, nil
}

func (c *Cache) until(ctx context.Context, kind Kind, name string, cond func(runtime.Object) bool) (runtime.Object, error) {
	changed, stop := c.Subscribe(kind, name)
	defer stop()
	for {
		if obj, err := c.Get(kind, name); err == nil && cond(obj) {
			return obj, nil
		}
		select {
		case <-changed:
		case <-ctx.Done():
			return nil, context.Cause(ctx)
		}
	}
}
