package watch

import (
	"context"
	"fmt"
	"io"
	"net/http"
	"runtime"
	"sync/atomic"
	"testing"
	"time"

	corev1 "k8s.io/api/core/v1"
	metav1 "k8s.io/apimachinery/pkg/apis/meta/v1"
	"k8s.io/apimachinery/pkg/runtime/schema"
	"k8s.io/client-go/informers"
	"k8s.io/client-go/kubernetes"
	"k8s.io/client-go/metadata"
	"k8s.io/client-go/metadata/metadatainformer"
	"k8s.io/client-go/rest"
	"k8s.io/client-go/tools/cache"
)

// bytesIn counts requests and response bytes.
type bytesIn struct {
	reqs, bytes atomic.Int64
	next        http.RoundTripper
}

func (b *bytesIn) RoundTrip(r *http.Request) (*http.Response, error) {
	b.reqs.Add(1)
	resp, err := b.next.RoundTrip(r)
	if err == nil {
		resp.Body = &countBody{ReadCloser: resp.Body, n: &b.bytes}
	}
	return resp, err
}

type countBody struct {
	io.ReadCloser
	n *atomic.Int64
}

func (c *countBody) Read(p []byte) (int, error) {
	n, err := c.ReadCloser.Read(p)
	c.n.Add(int64(n))
	return n, err
}

func counted(cfg *rest.Config) (*rest.Config, *bytesIn) {
	cfg = rest.CopyConfig(cfg)
	b := &bytesIn{}
	cfg.Wrap(func(rt http.RoundTripper) http.RoundTripper { b.next = rt; return b })
	return cfg, b
}

type informer struct {
	store  cache.Store
	synced cache.InformerSynced
}

func heap() uint64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return m.HeapAlloc
}

// How to watch the injected Secrets, measured: a namespace holds 300
// Secrets of 8 KiB, of which 3 are injected. One informer per injected
// Secret by name (what the watch does) receives and holds those 3; a
// metadata-only informer on the namespace's Secrets holds all 300
// objects' metadata and still has no data to tell a rotation from a label
// change (each change would cost a GET); a full informer holds all 300
// Secrets, values included.
func TestAPIWatchSecretInformerFootprint(t *testing.T) {
	f := newFx(t)
	value := make([]byte, 8<<10)
	for i := range 300 {
		_, err := f.c.CoreV1().Secrets(f.ns).Create(f.ctx, &corev1.Secret{ObjectMeta: metav1.ObjectMeta{Name: fmt.Sprintf("other-%03d", i)},
			Data: map[string][]byte{"v": value}}, metav1.CreateOptions{})
		if err != nil {
			t.Fatal(err)
		}
	}
	named := []string{"db", "other-000", "other-001"}
	type result struct {
		objects     int
		reqs, bytes int64
		heap        int64
	}
	measure := func(start func(ctx context.Context, cfg *rest.Config) []informer) result {
		cfg, b := counted(f.api.Config)
		ctx, cancel := context.WithTimeout(f.ctx, time.Minute)
		defer cancel()
		before := heap()
		infs := start(ctx, cfg)
		for _, inf := range infs {
			if !cache.WaitForCacheSync(ctx.Done(), inf.synced) {
				t.Fatal("informer did not sync")
			}
		}
		r := result{reqs: b.reqs.Load(), bytes: b.bytes.Load(), heap: int64(heap()) - int64(before)}
		for _, inf := range infs {
			r.objects += len(inf.store.List())
		}
		runtime.KeepAlive(infs)
		return r
	}
	byName := func(names []string) func(ctx context.Context, cfg *rest.Config) []informer {
		return func(ctx context.Context, cfg *rest.Config) []informer {
			ctl := New(kubernetes.NewForConfigOrDie(cfg), Options{})
			var out []informer
			ctl.mu.Lock()
			for _, n := range names {
				sw := ctl.watchSecret(f.ns, n)
				context.AfterFunc(ctx, sw.stop)
				out = append(out, informer{sw.store, sw.ctl.HasSynced})
			}
			ctl.mu.Unlock()
			return out
		}
	}
	perName := measure(byName(named))
	var thirty []string
	for i := range 30 {
		thirty = append(thirty, fmt.Sprintf("other-%03d", 100+i))
	}
	perName30 := measure(byName(thirty))
	meta := measure(func(ctx context.Context, cfg *rest.Config) []informer {
		mf := metadatainformer.NewFilteredSharedInformerFactory(metadata.NewForConfigOrDie(cfg), 0, f.ns, nil)
		inf := mf.ForResource(schema.GroupVersionResource{Version: "v1", Resource: "secrets"}).Informer()
		mf.Start(ctx.Done())
		return []informer{{inf.GetStore(), inf.HasSynced}}
	})
	full := measure(func(ctx context.Context, cfg *rest.Config) []informer {
		sf := informers.NewSharedInformerFactoryWithOptions(kubernetes.NewForConfigOrDie(cfg), 0, informers.WithNamespace(f.ns))
		inf := sf.Core().V1().Secrets().Informer()
		sf.Start(ctx.Done())
		return []informer{{inf.GetStore(), inf.HasSynced}}
	})
	for _, r := range []struct {
		name string
		r    result
	}{{"per-name (the watch)", perName}, {"per-name, 30 Secrets", perName30}, {"metadata-only, namespace", meta}, {"full, namespace", full}} {
		t.Logf("%-26s objects %4d  requests %2d  received %8d B  heap %+9d B", r.name, r.r.objects, r.r.reqs, r.r.bytes, r.r.heap)
	}
	if perName.objects != len(named) {
		t.Errorf("per-name informers hold %d objects; want %d", perName.objects, len(named))
	}
	if perName.bytes >= meta.bytes || meta.bytes >= full.bytes {
		t.Errorf("received bytes: per-name %d, metadata %d, full %d; want per-name < metadata < full", perName.bytes, meta.bytes, full.bytes)
	}
	t.Logf("per injected Secret: %d B received, %d B of heap (from 3 to 30 Secrets)",
		(perName30.bytes-perName.bytes)/27, (perName30.heap-perName.heap)/27)
}
