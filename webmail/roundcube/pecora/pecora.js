/**
 * pecora plugin: marks PEC messages in the list and adds the receipt type to compose.
 *
 * @license GNU GPLv3+
 */
window.rcmail && rcmail.addEventListener('init', function() {
    // The message list: a badge for each PEC kind (what the headers claim; opening the
    // message shows pecora's verdict).
    rcmail.addEventListener('insertrow', function(evt) {
        var msg = rcmail.env.messages && rcmail.env.messages[evt.uid];
        var kind = msg && msg.flags && msg.flags.pecora;
        if (!kind || !/^[a-z-]+$/.test(kind) || !evt.row || !evt.row.obj)
            return;
        var cls = kind == 'posta-certificata' ? 'certified' : (kind == 'anomalia' ? 'anomaly' : 'receipt');
        $(evt.row.obj).addClass('pecora-' + cls).attr('data-pecora-kind', kind);
        var badge = $('<span>').addClass('pecora-badge pecora-badge-' + cls)
            .text(rcmail.get_label('pecora.badge_' + kind));
        $('td.subject span.subject', evt.row.obj).first().prepend(badge);
    });

    // Compose: the receipt type, sent with the message as _pecora_receipt.
    if (rcmail.env.action == 'compose' && rcmail.gui_objects.messageform) {
        var form = $(rcmail.gui_objects.messageform);
        var hidden = $('<input type="hidden" name="_pecora_receipt" value="completa">').appendTo(form);
        var select = $('<select id="pecora-receipt" class="custom-select">');
        $.each(rcmail.env.pecora_receipt_types || [], function(i, t) {
            select.append($('<option>').val(t).text(rcmail.get_label('pecora.receipt_' + t)));
        });
        select.on('change', function() { hidden.val(this.value); });
        var row = $('<div class="form-group row">')
            .append($('<label for="pecora-receipt" class="col-form-label col-6">').text(rcmail.get_label('pecora.receipttype')))
            .append($('<div class="col-6">').append(select));
        var priority = $('#compose-priority').closest('.form-group');
        if (priority.length)
            row.insertAfter(priority);
        else
            row.prependTo(form);
    }
});
