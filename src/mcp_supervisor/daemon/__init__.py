"""The daemon: the composition root (``app``), reloads by difference, the controls and views it gives the admin
port, the built-in workers, systemd (notify, sockets), fleet mode (``cluster``), replicas, and where ``ctl`` finds it.
"""
