// Safe Denoiser: tooltips, the delete confirmation, the "Negate this image" question, the accordion's status
// line after each run, and the tab's Build button held while chosen images are still uploading (and a lost
// upload reported).
// Every script of every extension shares the page's global scope: only names starting with safeDenoiser
// are global; the rest lives in the closure below.

function safeDenoiserConfirmDelete(name, confirmed) {
    // Called by the tab's Delete button (gradio `_js`): returns the handler's inputs [bank, confirmed].
    if (!name) return [name, false];
    return [name, window.confirm('Delete the bank "' + name + '"? Its file is removed from the bank folder; ' +
                                 'this cannot be undone.')];
}

function safeDenoiserNegateImage(choices, gallery) {
    // Called by the gallery's "Negate this image" button (gradio `_js`) once the server has put the bank
    // choices ({banks: [{name, count}], default}) in `choices`; returns the handler's inputs [request,
    // gallery], request being JSON {index, bank} or {cancelled: true}. The image is the gallery's selected one
    // (the WebUI's selected_gallery_index(), javascript/ui.js), or its only one; without either nothing is
    // asked and the server says what is missing.
    var info = {};
    try {
        info = JSON.parse(choices || "{}");
    } catch (error) {
        info = {};
    }
    var count = gallery ? gallery.length : 0;
    var index = typeof selected_gallery_index === "function" ? selected_gallery_index() : -1;
    if (index < 0 && count === 1) index = 0;
    if (count === 0 || index < 0 || index >= count) return [JSON.stringify({index: index, bank: ""}), gallery];
    var banks = (info.banks || []).map(function(bank) { return bank.name + " (" + bank.count + ")"; });
    var bank = window.prompt("Negate this image: add image " + (index + 1) + " of the gallery to the negation " +
                             "bank below, so that generations using that bank avoid it.\n\nExisting negation " +
                             "banks: " + (banks.length ? banks.join(", ") : "none yet") + ". A new name " +
                             "creates a new bank.", info.default || "");
    if (bank === null || !bank.trim()) return [JSON.stringify({cancelled: true}), gallery];
    return [JSON.stringify({index: index, bank: bank.trim()}), gallery];
}

(function() {
    var accordionHints = {
        "": "Correct each sampling step away from the images of the chosen negation banks (Training-Free Safe Denoisers). The tick in the header switches it on for this generation.",
        "_status": "What the last generation did: on which images the correction fired, at which sampling steps.",
        "_banks": "Negation banks: sets of images the generation should avoid. Build them in the Safe Denoiser tab.",
        "_banks_refresh": "Reload the list of banks from the bank folder.",
        "_strength": "How strongly this bank pushes the generation away (0 = not at all, 1 = as the paper).",
        "_mode": "How the correction is computed; 'default' is the recommended mode. The line beside it explains the chosen one.",
        "_advanced": "Fine-tuning; the defaults come from the chosen mode.",
        "_bandwidth": "Kernel bandwidth: how far from a bank image a latent still counts as close. 0 uses the mode's own.",
        "_threshold": "Smallest gate signal that triggers a correction. A negative value uses the mode's own.",
        "_window_start": "Fraction of the sampling steps actually run where correction starts (0 = first step).",
        "_window_end": "Fraction of the sampling steps actually run where correction stops (1 = last step).",
        "_enforced": "Banks the server operator applies to every generation.",
        "_negate_image": "Negate this image: add the selected image to a negation bank, so generations using that bank avoid it (asks which bank first)."
    };
    var tabHints = {
        "_name": "File name of the new bank in the bank folder (letters, digits, spaces, - _ . + ( )).",
        "_files": "Images of what to avoid. Broken files are reported and skipped. Only their latents are kept.",
        "_folder": "A folder on the server to read images from, instead of uploading them.",
        "_recursive": "Read the folder's sub-folders too.",
        "_from_outputs": "Fill the folder with the WebUI's txt2img outputs folder (and its dated sub-folders) and choose the role reference: your own generations as ordinary images.",
        "_prompt": "What generations should avoid: the loaded model draws samples of it and keeps their latents.",
        "_negative_prompt": "Negative prompt for those samples.",
        "_samples": "How many samples to draw; it takes as long as generating that many images.",
        "_prompt_role": "negation: the prompt is what to avoid. reference: the prompt shows ordinary images.",
        "_prompt_name": "File name of the new bank in the bank folder.",
        "_prompt_overwrite": "Rebuild a bank that already exists (an enforced bank is never replaced).",
        "_prompt_build": "Draw the samples with the loaded model and save their latents as a bank. Generations wait meanwhile.",
        "_own_reference": "Build the reference bank of this model family (once per family): 400 of the model's own samples of 40 ordinary prompts (a street, a portrait, a landscape, ...) at this CFG scale.",
        "_prompt_cancel": "Stop drawing samples; nothing is written.",
        "_prompt_sampler": "The WebUI's sampler to draw the samples with, by name (e.g. Euler, DPM++ 2M).",
        "_prompt_steps": "Sampling steps of each sample.",
        "_prompt_cfg": "CFG scale of the guided samples.",
        "_prompt_unguided": "Share of the samples drawn at CFG 1 (the model's plain draws of the prompt), the rest at the CFG scale: a bank of both catches the concept however strongly a prompt asks for it.",
        "_prompt_width": "Width of the samples in pixels, a multiple of 8; 0 uses the loaded model's native size.",
        "_prompt_height": "Height of the samples in pixels, a multiple of 8; 0 uses the loaded model's native size.",
        "_prompt_seed": "Seed of the first sample; sample i uses seed + i, recorded on the bank's card. -1 picks one at random.",
        "_card_fields": "Describe the bank for whoever uses it: shown before it is installed or enabled.",
        "_card_title": "A readable title; the bank name is used when empty.",
        "_card_description": "What the images show and why a generation should avoid it.",
        "_card_author": "Who made the bank.",
        "_card_license": "Under which terms the bank may be shared and used.",
        "_card_usage_hint": "Intended use, and recommended mode and strength.",
        "_overwrite": "Rebuild a bank that already exists (an enforced bank is never replaced).",
        "_role": "negation: images to avoid. reference: a few hundred ordinary images of what you usually generate; the default mode contrasts against every reference bank that fits the loaded model.",
        "_build": "Encode the images with the loaded model's VAE and save the bank. Generations wait meanwhile.",
        "_cancel": "Stop the running build; nothing is written.",
        "_progress": "Files read so far.",
        "_report": "What happened to every file: added, duplicate, or why it was skipped.",
        "_table": "Banks in the bank folder, with their latent space and whether they fit the loaded model.",
        "_selected": "The bank the buttons below act on.",
        "_refresh": "Reload the bank list.",
        "_card": "The bank's card: what it holds, who made it, its licence and intended use.",
        "_inspect": "Show everything the bank file records about itself.",
        "_export": "Download the bank with its card and recommended settings (a bank preset).",
        "_export_settings": "Download only the card and settings (.preset.json), naming the bank by its hash.",
        "_delete": "Delete the selected bank (asks first). Enforced banks cannot be deleted.",
        "_new_name": "New name for the selected bank.",
        "_rename": "Rename the selected bank. Enforced banks cannot be renamed.",
        "_preset_file": "A bank (.safetensors) or a settings preset (.preset.json). Its card is shown before anything is installed.",
        "_preset_name": "Install under this name instead of the file's.",
        "_preset_overwrite": "Replace a bank of the same name.",
        "_install": "Install the preset whose card is shown above.",
        "_plot_refresh": "Plot the gate signal of the last generation, per sampling step and image.",
        "_enforced": "Banks the server operator applies to every generation."
    };

    function setHint(element, text) {
        if (!element || element.title) return;
        element.title = text;
        for (var input of element.querySelectorAll("input, textarea, button, select")) {
            if (!input.title) input.title = text;
        }
    }

    function applyHints(root) {
        for (var tab of ["txt2img", "img2img"]) {
            var prefix = "safe_denoiser_" + tab;
            for (var suffix in accordionHints) {
                if (suffix === "_strength") {
                    for (var element of root.querySelectorAll('[id^="' + prefix + '_strength_"]')) {
                        setHint(element, accordionHints[suffix]);
                    }
                } else {
                    setHint(root.querySelector("#" + prefix + suffix), accordionHints[suffix]);
                }
            }
        }
        for (var tabSuffix in tabHints) {
            setHint(root.querySelector("#safe_denoiser_tab" + tabSuffix), tabHints[tabSuffix]);
        }
    }

    function refreshStatusAfterRuns(root, upload) {
        // The WebUI rewrites #html_info_<tab> when a generation ends; then ask for our status line, but not
        // while the tab is uploading images: an event that finishes meanwhile makes gradio drop the upload.
        for (var tab of ["txt2img", "img2img"]) {
            var info = root.querySelector("#html_info_" + tab);
            var button = root.querySelector("#safe_denoiser_" + tab + "_status_refresh");
            if (!info || !button) continue;
            new MutationObserver(function(button) {
                var timer = null;
                var refresh = function() {
                    if (upload.inFlight()) timer = setTimeout(refresh, 500); else button.click();
                };
                return function() {
                    clearTimeout(timer);
                    timer = setTimeout(refresh, 300);
                };
            }(button)).observe(info, {childList: true, subtree: true, characterData: true});
        }
    }

    function uploadsPending(files) {
        // gradio 3.41 lists every chosen file at once and shows "Uploading..." in place of its size until the
        // browser has sent it (InteractiveFile.svelte, FilePreview.svelte); an event fired before that hands
        // the server the files' names with no content.
        for (var cell of files.querySelectorAll("tr.file td.download")) {
            if (!cell.querySelector("a")) return true;
        }
        return false;
    }

    function watchFinishedUploads(onFinished) {
        // Calls onFinished(entry) for each /upload request the page completes (resource timing entries).
        if (!window.PerformanceObserver) return;
        new PerformanceObserver(function(list) {
            for (var entry of list.getEntries()) {
                if (/\/upload$/.test(new URL(entry.name, location.href).pathname)) onFinished(entry);
            }
        }).observe({type: "resource"});
    }

    var lostUploadText = "This upload was lost: another event finished while the images were uploading, and " +
        "gradio 3.41 then drops the upload. Clear the list (×) and choose the images again.";

    function holdBuildWhileUploading(root, upload) {
        // Build stays disabled while any chosen image is still uploading, so a bank is never built from
        // half-sent files; it comes back when every file shows its size. gradio 3.41's File drops an upload's
        // result when any event finishes while it is in flight (it re-normalises its value, which is then no
        // longer the one it uploaded), and its files stay "Uploading..." for good: an /upload request that has
        // finished with our files still uploading a second later is such a loss, and the tab says what to do.
        // Returns whether the tab was there.
        var files = root.querySelector("#safe_denoiser_tab_files");
        var build = root.querySelector("#safe_denoiser_tab_build");
        if (!files || !build) return false;
        var note = document.createElement("div");
        note.id = "safe_denoiser_tab_upload_lost";
        note.className = "safe-denoiser-error";
        files.insertAdjacentElement("afterend", note);
        var pendingSince = null, lost = false, shown = "ready";
        var update = function() {
            var pending = uploadsPending(files);
            if (!pending) lost = false;
            if (pending && pendingSince === null) pendingSince = performance.now();
            if (!pending) pendingSince = null;
            var state = !pending ? "ready" : lost ? "lost" : "uploading";
            if (state === shown) return;
            shown = state;
            build.disabled = pending;
            build.title = state === "ready" ? tabHints["_build"] :
                          state === "lost" ? lostUploadText : "Waiting for the images to finish uploading…";
            note.textContent = state === "lost" ? lostUploadText : "";
        };
        watchFinishedUploads(function(entry) {
            if (pendingSince === null || entry.startTime < pendingSince - 1000) return;  // not this upload
            setTimeout(function() {
                if (pendingSince !== null && uploadsPending(files)) {
                    lost = true;
                    update();
                }
            }, 1000);
        });
        upload.inFlight = function() { return shown === "uploading"; };
        new MutationObserver(update).observe(files, {childList: true, subtree: true, characterData: true});
        update();
        return true;
    }

    onUiLoaded(function() {
        var root = gradioApp();
        applyHints(root);
        var upload = {inFlight: function() { return false; }};  // the tab's image upload, once the tab is there
        refreshStatusAfterRuns(root, upload);
        var buildHeld = holdBuildWhileUploading(root, upload);
        // Controls shown later (a strength slider per selected bank) get their hints when they appear.
        var pending = null;
        new MutationObserver(function() {
            if (!buildHeld) buildHeld = holdBuildWhileUploading(root, upload);
            clearTimeout(pending);
            pending = setTimeout(function() { applyHints(root); }, 250);
        }).observe(root, {childList: true, subtree: true});
    });
})();
