// Tools module: the pause program of a kind node built offline (tools/kindimages.py), the
// process that holds each Pod's namespaces.
module podcron.dev/tools/pause

go 1.26.0
