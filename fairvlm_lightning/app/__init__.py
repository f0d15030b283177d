"""The application: the ``fairvlm`` command, the benchmark runner and its reports, the plots.

Built on the library (:mod:`fairvlm_lightning`'s metrics, losses, mining, callbacks, module,
encoders and data loading), which never imports it. Its extra dependencies come with
``pip install 'fairvlm-lightning[app]'`` (scipy for the benchmark statistics, matplotlib for
the plots).
"""
