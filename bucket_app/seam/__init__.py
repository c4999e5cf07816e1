"""The one seam between bucket_app and the private internals of faust, mode, aiokafka and aiohttp.

Rule: only modules of this package name a private attribute (``_name``) of those libraries;
the rest of bucket_app calls the small public functions and classes here. Each private name
used here is a row of :data:`bucket_app.seam.compat.PRIVATE_NAMES` (owner, kind, why), checked
at start-up by :func:`bucket_app.seam.compat.check` and one contract test each. The libraries'
classes are never changed: behaviour is bent through subclasses an app chooses
(:class:`~bucket_app.seam.app.SeamApp` and the consumer, transport and table classes) and hooks
on one app's objects, so two apps in one process, or one app built twice, never share or stack
a hook.

Modules, by what they bend: ``app`` (the app's transport and consumer), ``consumer`` (Faust's
consumer, its thread and fetch loop), ``fetch`` (aiokafka's fetch sizes and record batches),
``store`` (Faust's RocksDB store), ``table`` (Faust's window expiry), ``clients`` (aiokafka
clients), ``web`` (Faust's aiohttp runner), ``compat`` (the table and the check).
"""
