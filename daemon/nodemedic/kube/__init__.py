"""The cluster side (nodemedic-kube.service): runs off the repair daemon, on the network."""
