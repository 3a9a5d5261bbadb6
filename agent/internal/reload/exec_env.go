package reload

// execEnv is the whole environment of an exec: command: a PATH and nothing
// of the agent's own (its K8SECRETS_AGENT_* settings, a URL with a token,
// whatever the pod template gave the container). A command that needs more
// is given it on its command line, or wrapped in a script that sets it.
var execEnv = []string{"PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"}
