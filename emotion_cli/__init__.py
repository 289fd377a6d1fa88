"""The ``emotion`` command line, the local stack (server + workers) and the work pools."""
