"""The cluster side (nodemedic-kube.service): runs off the repair daemon, on the network. It
follows the daemon's D-Bus API and shows what it does on the Node (conditions, Events), and
holds the fleet guard's slots; it has network access and no write access to the node."""
