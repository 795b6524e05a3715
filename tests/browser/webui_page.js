// The WebUI's page-level script functions that extensions rely on, for a test page without the WebUI.
// Behaviour follows AUTOMATIC1111 v1.10.1 (commit 82a973c0):
//  - script.js: gradioApp(); onUiLoaded callbacks run once, from a MutationObserver, as soon as
//    #txt2img_prompt exists; onUiUpdate / onAfterUiUpdate (debounced 200 ms) run on every mutation.
//  - javascript/ui.js: updateInput(target) dispatches a bubbling "input" event so gradio reads the value;
//    selected_gallery_index() is the index of the thumbnail of class "selected" among the thumbnails
//    (.thumbnail-item.thumbnail-small) of the galleries (.gradio-gallery, id ending in _gallery) in the
//    shown tab (.tabitem styled "display: block;"), -1 when none is selected.
//  - javascript/inputAccordion.js: every .input-accordion gets a visible checkbox in its header label; the
//    header checkbox and the accordion's open state drive the hidden gradio checkbox <id>-checkbox, until
//    the user ticks the header checkbox itself (then open/closed and enabled are independent); the extra
//    column <id>-extra moves into the header; inputAccordionChecked(id, checked) is the way back.

function gradioApp() {
    const elems = document.getElementsByTagName('gradio-app');
    const elem = elems.length == 0 ? document : elems[0];
    if (elem !== document) {
        elem.getElementById = function(id) { return document.getElementById(id); };
    }
    return elem.shadowRoot ? elem.shadowRoot : elem;
}

var uiUpdateCallbacks = [];
var uiAfterUpdateCallbacks = [];
var uiLoadedCallbacks = [];
var uiAfterUpdateTimeout = null;
var executedOnLoaded = false;

function onUiUpdate(callback) { uiUpdateCallbacks.push(callback); }
function onAfterUiUpdate(callback) { uiAfterUpdateCallbacks.push(callback); }
function onUiLoaded(callback) { uiLoadedCallbacks.push(callback); }

function executeCallbacks(queue, arg) {
    for (const callback of queue) {
        try {
            callback(arg);
        } catch (e) {
            console.error("error running callback", callback, ":", e);
        }
    }
}

document.addEventListener("DOMContentLoaded", function() {
    new MutationObserver(function(mutations) {
        if (!executedOnLoaded && gradioApp().querySelector('#txt2img_prompt')) {
            executedOnLoaded = true;
            executeCallbacks(uiLoadedCallbacks);
        }
        executeCallbacks(uiUpdateCallbacks, mutations);
        clearTimeout(uiAfterUpdateTimeout);
        uiAfterUpdateTimeout = setTimeout(function() { executeCallbacks(uiAfterUpdateCallbacks); }, 200);
    }).observe(gradioApp(), {childList: true, subtree: true});
});

function updateInput(target) {
    let event = new Event("input", {bubbles: true});
    Object.defineProperty(event, "target", {value: target});
    target.dispatchEvent(event);
}

function selected_gallery_index() {
    var selector = '[style="display: block;"].tabitem div[id$=_gallery].gradio-gallery .thumbnails > ' +
                   '.thumbnail-item.thumbnail-small';
    var shown = Array.from(gradioApp().querySelectorAll(selector)).filter(function(thumbnail) {
        return thumbnail.parentElement.offsetParent;
    });
    return shown.findIndex(function(thumbnail) { return thumbnail.classList.contains('selected'); });
}

function inputAccordionChecked(id, checked) {
    var accordion = gradioApp().getElementById(id);
    accordion.visibleCheckbox.checked = checked;
    accordion.onVisibleCheckboxChange();
}

function setupInputAccordion(accordion) {
    var header = accordion.querySelector('.label-wrap');
    var hiddenCheckbox = gradioApp().querySelector('#' + accordion.id + '-checkbox input');
    var extra = gradioApp().querySelector('#' + accordion.id + '-extra');
    var linked = true;
    var isOpen = function() { return header.classList.contains('open'); };

    new MutationObserver(function() {
        accordion.classList.toggle('input-accordion-open', isOpen());
        if (linked) {
            accordion.visibleCheckbox.checked = isOpen();
            accordion.onVisibleCheckboxChange();
        }
    }).observe(header, {attributes: true, attributeFilter: ['class']});

    if (extra) header.insertBefore(extra, header.lastElementChild);

    var visibleCheckbox = document.createElement('INPUT');
    visibleCheckbox.type = 'checkbox';
    visibleCheckbox.checked = isOpen();
    visibleCheckbox.id = accordion.id + '-visible-checkbox';
    visibleCheckbox.className = hiddenCheckbox.className + ' input-accordion-checkbox';
    var label = header.querySelector('span');
    label.insertBefore(visibleCheckbox, label.firstChild);

    accordion.visibleCheckbox = visibleCheckbox;
    accordion.onVisibleCheckboxChange = function() {
        if (linked && isOpen() != visibleCheckbox.checked) header.click();
        hiddenCheckbox.checked = visibleCheckbox.checked;
        updateInput(hiddenCheckbox);
    };
    visibleCheckbox.addEventListener('click', function(event) {
        linked = false;
        event.stopPropagation();
    });
    visibleCheckbox.addEventListener('input', accordion.onVisibleCheckboxChange);
}

onUiLoaded(function() {
    for (var accordion of gradioApp().querySelectorAll('.input-accordion')) {
        setupInputAccordion(accordion);
    }
});
