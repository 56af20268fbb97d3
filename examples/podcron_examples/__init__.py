"""Example jobs shipped with podcron, registered in the ``podcron.jobs`` entry-point group."""
