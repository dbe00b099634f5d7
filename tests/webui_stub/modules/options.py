"""Settings: `OptionInfo` describes one, `Options` holds the values (unset ones read as their default)."""
from __future__ import annotations


class OptionInfo:
    def __init__(self, default=None, label="", component=None, component_args=None, onchange=None, section=None,
                 refresh=None, comment_before='', comment_after='', infotext=None, restrict_api=False,
                 category_id=None):
        self.__dict__.update((name, value) for name, value in locals().items() if name != "self")

    def needs_reload_ui(self):
        self.comment_after += " (requires Reload UI)"
        return self


class Options:
    def __init__(self, data_labels: dict, restricted_opts=None):
        object.__setattr__(self, "data_labels", data_labels)
        object.__setattr__(self, "data", {key: info.default for key, info in data_labels.items()})

    def __getattr__(self, key):
        if key in self.data:
            return self.data[key]
        if key in self.data_labels:
            return self.data_labels[key].default
        raise AttributeError(key)

    def __setattr__(self, key, value):
        if key not in self.data_labels and key not in self.data:
            raise AttributeError(f"no setting {key!r}")
        self.data[key] = value

    def add_option(self, key, info):
        self.data_labels[key] = info
        self.data.setdefault(key, info.default)
