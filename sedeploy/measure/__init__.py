"""The measuring wing: timing, roofs, searches, the calibration sweep, choices made by measurement, reuse.

Commands measure through this package and nothing else times a runner: one timing loop
(:mod:`sedeploy.measure.timing`), one roof (:mod:`sedeploy.measure.roofs`), one plan shape and search
(:mod:`sedeploy.measure.search`). Builders are passed in as functions, so building can call into here
without an import circle.
"""
