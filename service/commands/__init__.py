"""Sub-commands of `spiritlm-serve`; each module registers its parsers with `register`."""
