"""Follows modules/ui_components.py: ``ToolButton`` is a button of class ``tool``; ``InputAccordion`` is a
hidden ``gr.Checkbox`` (the script argument) that drives a ``gr.Accordion`` through the page's
``inputAccordionChecked``; ``extra()`` is a column in the accordion's header. ``DropdownMulti`` is a dropdown
that is always multi-select."""

import gradio as gr


class ToolButton(gr.Button):
    """The small square button of the gallery's row; ``tooltip`` is the keyword the WebUI's patched gradio
    components take (modules/gradio_extensons.py keeps it as ``webui_tooltip``)."""

    def __init__(self, *args, tooltip=None, **kwargs):
        self.webui_tooltip = tooltip
        super().__init__(*args, elem_classes=["tool", *kwargs.pop("elem_classes", [])], **kwargs)

    def get_block_name(self):
        return "button"


class DropdownMulti(gr.Dropdown):
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
