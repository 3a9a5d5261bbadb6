// Command coredns is CoreDNS with the plugins a kind cluster's DNS uses: the
// ones in the Corefile kubeadm writes (errors, health, ready, kubernetes,
// prometheus, forward, cache, loop, reload, loadbalance) and a few that are
// commonly added to it (log, hosts, rewrite, template, whoami, bind,
// bufsize). Building all of CoreDNS's plugins (plugin.cfg) compiles the AWS,
// Azure, Google Cloud, etcd and tracing SDKs too, for nothing: about a
// minute and a half more of a cold build on a 2-core machine.
//
// The chain order stays CoreDNS's own (dnsserver.Directives, generated from
// its plugin.cfg); a directive whose plugin is not linked in is refused when
// the Corefile is loaded.
package main

import (
	"github.com/coredns/coredns/coremain"

	_ "github.com/coredns/coredns/plugin/bind"
	_ "github.com/coredns/coredns/plugin/bufsize"
	_ "github.com/coredns/coredns/plugin/cache"
	_ "github.com/coredns/coredns/plugin/errors"
	_ "github.com/coredns/coredns/plugin/forward"
	_ "github.com/coredns/coredns/plugin/health"
	_ "github.com/coredns/coredns/plugin/hosts"
	_ "github.com/coredns/coredns/plugin/kubernetes"
	_ "github.com/coredns/coredns/plugin/loadbalance"
	_ "github.com/coredns/coredns/plugin/log"
	_ "github.com/coredns/coredns/plugin/loop"
	_ "github.com/coredns/coredns/plugin/metrics"
	_ "github.com/coredns/coredns/plugin/ready"
	_ "github.com/coredns/coredns/plugin/reload"
	_ "github.com/coredns/coredns/plugin/rewrite"
	_ "github.com/coredns/coredns/plugin/template"
	_ "github.com/coredns/coredns/plugin/whoami"
)

func main() { coremain.Run() }
