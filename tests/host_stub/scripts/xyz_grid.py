"""Follows scripts/xyz_grid.py (WebUI v1.10.1): ``AxisOption``, ``apply_field`` and the module-level
``axis_options`` list other extensions append to; a cell sets its value on ``p`` and runs the generation."""

from modules import scripts


def apply_field(field):
    def fun(p, x, xs):
        setattr(p, field, x)

    return fun


def format_value_add_label(p, opt, x):
    return f"{opt.label}: {x}"


class AxisOption:
    def __init__(self, label, type, apply, format_value=format_value_add_label, confirm=None, cost=0.0,
                 choices=None, prepare=None):
        self.label = label
        self.type = type
        self.apply = apply
        self.format_value = format_value
        self.confirm = confirm
        self.cost = cost
        self.prepare = prepare
        self.choices = choices


axis_options = [AxisOption("Seed", int, apply_field("seed"))]


class Script(scripts.Script):
    def title(self):
        return "X/Y/Z plot"
