//! Rate limits and budgets: native, atomic, tenant-isolated counters (being written).
