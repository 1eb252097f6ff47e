"""The inspector's stages, one thread each, joined by bounded queues: receive → prepare → infer → record.

Each module has its pure functions at its core and a thin `Stage` thread around them; `service.Inspector`
assembles, starts, supervises and stops them.
"""
