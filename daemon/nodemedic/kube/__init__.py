"""The cluster side: nodemedic-kube.service follows the daemon's D-Bus API and shows what it
does on the Node (conditions, Events). It has network access and no write access to the node;
the repair daemon itself never talks to the network."""
