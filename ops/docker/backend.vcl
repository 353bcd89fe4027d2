# ops/docker/backend.vcl - compose's part of Varnish's configuration, included by the
# shared ops/cluster/catalog.vcl (`include "backend.vcl";`); both are mounted in
# /etc/varnish/.
#
# The backend is HAProxy, which balances the readers. Its name is resolved when the VCL
# is loaded: if compose recreates the haproxy container, restart varnish too.
backend default {
    .host = "haproxy";
    .port = "8080";
}

# Who may send PURGE: the writers, the only containers on compose's `purge` network
# (ops/docker/compose.yaml fixes its subnet; change both together).
acl purgers {
    "10.213.81.0"/24;
}
