"""One adapter module per model family. Importing this package registers nothing: `ditf_export.catalog`
imports every adapter module, so a module needing only `families.base` never pulls the adapters in."""
