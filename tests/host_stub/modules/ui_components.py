"""Follows modules/ui_components.py (v1.10.1) for what extensions build with it.

``InputAccordion`` is a hidden ``gr.Checkbox`` (elem_id ``<id>-checkbox``) whose value is the enable state,
plus a ``gr.Accordion`` (elem_id ``<id>``, class ``input-accordion``) entered by ``with``; the checkbox's
change event calls the page's ``inputAccordionChecked`` (javascript/inputAccordion.js), and ``extra()``
is a column the page script moves into the accordion's header. ``DropdownMulti`` is an always-multiselect
``gr.Dropdown``; ``FormRow`` a row that fits in forms; ``ToolButton`` a small button with class ``tool``.
"""

import gradio as gr


class FormComponent:
    def get_expected_parent(self):
        return gr.components.Form


class FormRow(FormComponent, gr.Row):
    def get_block_name(self):
        return "row"


class ToolButton(FormComponent, gr.Button):
    def __init__(self, *args, **kwargs):
        classes = kwargs.pop("elem_classes", [])
        super().__init__(*args, elem_classes=["tool", *classes], **kwargs)

    def get_block_name(self):
        return "button"


class DropdownMulti(FormComponent, gr.Dropdown):
    def __init__(self, **kwargs):
        super().__init__(multiselect=True, **kwargs)

    def get_block_name(self):
        return "dropdown"


class InputAccordion(gr.Checkbox):
    global_index = 0

    def __init__(self, value, **kwargs):
        self.accordion_id = kwargs.get("elem_id")
        if self.accordion_id is None:
            self.accordion_id = f"input-accordion-{InputAccordion.global_index}"
            InputAccordion.global_index += 1
        super().__init__(value, **{**kwargs, "elem_id": f"{self.accordion_id}-checkbox", "visible": False})
        self.change(fn=None, _js='function(checked){ inputAccordionChecked("' + self.accordion_id + '", checked); }',
                    inputs=[self])
        self.accordion = gr.Accordion(**{**kwargs, "elem_id": self.accordion_id,
                                         "label": kwargs.get("label", "Accordion"),
                                         "elem_classes": ["input-accordion"], "open": value})

    def extra(self):
        return gr.Column(elem_id=self.accordion_id + "-extra", elem_classes="input-accordion-extra", min_width=0)

    def __enter__(self):
        self.accordion.__enter__()
        return self

    def __exit__(self, exc_type, exc_val, exc_tb):
        self.accordion.__exit__(exc_type, exc_val, exc_tb)

    def get_block_name(self):
        return "checkbox"
