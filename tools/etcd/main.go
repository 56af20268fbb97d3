// Command etcd is the etcd server, built from go.etcd.io/etcd/server/v3 so that
// the project obtains it from the Go module proxy like any other dependency.
package main

import (
	"os"

	"go.etcd.io/etcd/server/v3/etcdmain"
)

func main() {
	etcdmain.Main(os.Args)
}
