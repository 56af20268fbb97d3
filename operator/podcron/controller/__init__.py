"""The operator's glue: kopf handlers, the status writer, Events and the control socket."""
