// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3 at the version pinned in
// go.mod (the etcd main module replaces its sibling modules with relative paths, so it cannot be
// "go install"ed; this wrapper depends on the published server module instead).
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
