<?php

/**
 * pecora: Roundcube understands Italian certified mail (PEC).
 *
 * - The message list marks certified mail, anomalies and each kind of receipt (from the
 *   X-Trasporto and X-Ricevuta headers: for display only, they prove nothing).
 * - Opening a certified message, an anomaly or a receipt shows a banner with the verdict
 *   of `pecora verify --json` run on the message's raw bytes: every PEC fact shown comes
 *   from it, never from headers a holder could have appended to their own mailbox.
 * - Opening a message the holder sent shows the timeline of its receipts, found over IMAP
 *   by the original Message-ID (X-Riferimento-Message-ID) in every folder, each one
 *   verified by pecora and grouped by PEC identifier.
 * - Compose offers the receipt type (completa, breve, sintetica), sent as X-TipoRicevuta,
 *   and no DSN request (the PEC listeners do not offer DSN).
 *
 * The plugin runs pecora with an argument vector (never a shell): the message shown on its
 * standard input, a timeline's receipts as private temporary files verified by one run;
 * pecora needs only the provider index, never the signing key.
 *
 * @license GNU GPLv3+
 */
class pecora extends rcube_plugin
{
    public $task = 'mail';

    /** The receipt types a sender may ask for (pec-format.md §1.4). */
    const RECEIPT_TYPES = ['completa', 'breve', 'sintetica'];

    /** The verdict of the message being shown, and its receipts when the holder sent it. */
    private $verdict;
    private $timeline;

    public function init()
    {
        $this->load_config();
        $this->add_texts('localization/', true);
        $this->add_hook('storage_init', [$this, 'storage_init']);
        $this->add_hook('messages_list', [$this, 'messages_list']);
        $this->add_hook('message_load', [$this, 'message_load']);
        $this->add_hook('message_objects', [$this, 'message_objects']);
        $this->add_hook('message_before_send', [$this, 'message_before_send']);

        $rcmail = rcmail::get_instance();
        // PEC's receipts are its delivery notifications, and the PEC listeners offer no
        // DSN (Roundcube would silently not ask for one): compose and the preferences do
        // not show the option (the skin renders it only when dsn_default may be changed).
        // Both immutable, as the skin sets its own: Roundcube applies immutable settings
        // again later, which would drop a plain addition to dont_override.
        $rcmail->config->set('dsn_default', false, true);
        $locked = (array) $rcmail->config->get('dont_override', []);
        if (!in_array('dsn_default', $locked)) {
            $locked[] = 'dsn_default';
            $rcmail->config->set('dont_override', $locked, true);
        }
        if ($rcmail->output->type == 'html') {
            $this->include_stylesheet($this->local_skin_path() . '/pecora.css');
            $this->include_script('pecora.js');
            $rcmail->output->set_env('pecora_receipt_types', self::RECEIPT_TYPES);
        }
    }

    /** The list needs the two headers that tell PEC messages apart. */
    public function storage_init($args)
    {
        $args['fetch_headers'] = trim(($args['fetch_headers'] ?? '') . ' X-TRASPORTO X-RICEVUTA');
        return $args;
    }

    /** Marks each listed message with its PEC kind, as its headers claim (display only). */
    public function messages_list($args)
    {
        foreach ((array) ($args['messages'] ?? []) as $header) {
            if (!is_object($header)) {
                continue;
            }
            if ($kind = self::claimed_kind($header->get('x-trasporto'), $header->get('x-ricevuta'))) {
                $header->list_flags['extra_flags']['pecora'] = $kind;
            }
        }
        return $args;
    }

    /** The kind a message claims: posta-certificata, anomalia, a receipt token, or null. */
    private static function claimed_kind($trasporto, $ricevuta)
    {
        $trasporto = strtolower(trim((string) $trasporto));
        $ricevuta = strtolower(trim((string) $ricevuta));
        if ($trasporto === 'posta-certificata') {
            return 'posta-certificata';
        }
        if ($trasporto === 'errore') {
            return 'anomalia';
        }
        if (preg_match('/^[a-z-]{1,40}$/', $ricevuta)) {
            return $ricevuta;
        }
        return null;
    }

    /** Verifies the message being opened, or gathers the receipts of one the holder sent. */
    public function message_load($args)
    {
        $message = $args['object'];
        $rcmail = rcmail::get_instance();
        // Only the message shown (not its parts fetched for download or a preview of a part).
        if (!in_array($rcmail->action, ['show', 'preview']) || !empty($message->context)) {
            return $args;
        }
        $headers = $message->headers;
        $claimed = self::claimed_kind($headers->get('x-trasporto'), $headers->get('x-ricevuta'));
        if ($claimed) {
            $raw = $rcmail->storage->get_raw_body($message->uid);
            $this->verdict = $this->verify($raw);
            if (!empty($this->verdict['genuine']) && $this->verdict['kind'] === 'posta-certificata') {
                self::show_original($message);
            }
        }
        else if ($this->sent_by_holder($message)) {
            $this->timeline = $this->receipts($headers->messageID);
        }
        return $args;
    }

    /**
     * A genuine transport envelope: its body becomes the original message (postacert.eml,
     * which pecora found unambiguous in the signed structure); the envelope's own text and
     * daticert.xml stay among the attachments.
     */
    private static function show_original($message)
    {
        $pid = null;
        foreach ($message->mime_parts as $id => $part) {
            if ($part->mimetype == 'message/rfc822' && strtolower(trim((string) $part->filename)) === 'postacert.eml') {
                $pid = (string) $id;
                break;
            }
        }
        if ($pid === null) {
            return;
        }
        $in = function ($p) use ($pid) {
            return $p->mime_id === $pid || strpos((string) $p->mime_id, $pid . '.') === 0;
        };
        $parts = array_values($message->parts);
        $inside = [];
        foreach ($parts as $i => $p) {
            // The original's own headers (Subject, From, To, Date) come just before its body.
            if ($in($p) || ($p->type === 'headers' && isset($parts[$i + 1]) && $in($parts[$i + 1]))) {
                $inside[] = $p;
            }
        }
        if ($inside) {
            $message->parts = $inside;
        }
    }

    /** True for a message in the Sent folder or from one of the holder's identities. */
    private function sent_by_holder($message)
    {
        $rcmail = rcmail::get_instance();
        if ((string) $message->folder === (string) $rcmail->config->get('sent_mbox')) {
            return true;
        }
        $from = rcube_mime::decode_address_list($message->headers->from, 1, false);
        $from = strtolower((string) (reset($from)['mailto'] ?? ''));
        foreach ($rcmail->user->list_emails() as $identity) {
            if ($from !== '' && strtolower($identity['email']) === $from) {
                return true;
            }
        }
        return false;
    }

    /**
     * Runs `pecora verify --json -` on the raw message: the decoded JSON object, or an
     * array with 'error' when pecora could not be run or said nothing readable.
     */
    private function verify($raw)
    {
        if (!is_string($raw) || $raw === '') {
            return ['error' => 'the message could not be read from the mailbox'];
        }
        $run = $this->run_verify(['-'], $raw);
        if (isset($run['error'])) {
            return $run;
        }
        $json = json_decode(trim($run['out']), true);
        if (!is_array($json) || !array_key_exists('genuine', $json)) {
            rcube::raise_error(['code' => 500, 'message' => "pecora verify exited {$run['status']}: " . trim($run['err'])], true, false);
            return ['error' => 'pecora verify gave no verdict (exit status ' . $run['status'] . ')'];
        }
        return $json;
    }

    /**
     * Runs one `pecora verify --json` over several saved messages (one process, one reading
     * of the index, however many receipts a timeline has): for each path, the decoded JSON
     * object pecora printed for it, or an array with 'error'.
     */
    private function verify_files(array $paths)
    {
        $verdicts = [];
        if (empty($paths)) {
            return $verdicts;
        }
        $run = $this->run_verify($paths, null);
        foreach (explode("\n", isset($run['out']) ? $run['out'] : '') as $line) {
            $json = json_decode(trim($line), true);
            if (is_array($json) && array_key_exists('genuine', $json) && isset($json['file'])) {
                $verdicts[$json['file']] = $json;
            }
        }
        foreach ($paths as $path) {
            if (!isset($verdicts[$path])) {
                if (!isset($run['error'])) {
                    rcube::raise_error(['code' => 500, 'message' => "pecora verify exited {$run['status']}: " . trim($run['err'])], true, false);
                }
                $verdicts[$path] = isset($run['error']) ? $run : ['error' => 'pecora verify gave no verdict (exit status ' . $run['status'] . ')'];
            }
        }
        return $verdicts;
    }

    /**
     * Runs `pecora verify --json --index INDEX` with $files (paths, or '-' with $stdin
     * written to its standard input): ['out' => ..., 'err' => ..., 'status' => ...], or an
     * array with 'error' when pecora could not be run.
     */
    private function run_verify(array $files, $stdin)
    {
        $rcmail = rcmail::get_instance();
        $bin = (string) $rcmail->config->get('pecora_bin', '/usr/bin/pecora');
        $index = (string) $rcmail->config->get('pecora_index', '/var/lib/pecora/index.ldif');
        $argv = array_merge([$bin, 'verify', '--json', '--index', $index, '--'], $files);
        $spec = [0 => ['pipe', 'r'], 1 => ['pipe', 'w'], 2 => ['pipe', 'w']];
        // An array command: PHP runs it without a shell.
        $proc = @proc_open($argv, $spec, $pipes, null, ['PATH' => '/usr/bin:/bin', 'LC_ALL' => 'C.UTF-8']);
        if (!is_resource($proc)) {
            rcube::raise_error(['code' => 500, 'message' => "pecora: cannot run $bin"], true, false);
            return ['error' => 'pecora verify could not be run'];
        }
        $raw = is_string($stdin) ? $stdin : '';
        // The message may be larger than a pipe's buffer: write it while reading the answer.
        stream_set_blocking($pipes[0], false);
        $out = $err = '';
        $written = 0;
        $len = strlen($raw);
        if ($len === 0) {
            fclose($pipes[0]);
        }
        // pecora answers in well under a second a message; one that does not within a
        // minute (two for a whole timeline) is stopped.
        $deadline = time() + (count($files) > 1 ? 120 : 60);
        while (true) {
            $read = [$pipes[1], $pipes[2]];
            $write = $written < $len ? [$pipes[0]] : null;
            $except = null;
            if (@stream_select($read, $write, $except, 5) === false || time() > $deadline) {
                proc_terminate($proc);
                break;
            }
            if ($write) {
                $n = fwrite($pipes[0], substr($raw, $written, 65536));
                $written += $n ?: 0;
                if ($written >= $len || $n === false) {
                    fclose($pipes[0]);
                    $written = $len;
                }
            }
            foreach ($read as $r) {
                $chunk = fread($r, 65536);
                if ($r === $pipes[1]) {
                    $out .= $chunk;
                }
                else {
                    $err .= $chunk;
                }
            }
            if (feof($pipes[1]) && feof($pipes[2])) {
                break;
            }
        }
        if ($written < $len) {
            fclose($pipes[0]);
        }
        fclose($pipes[1]);
        fclose($pipes[2]);
        $status = proc_close($proc);
        return ['out' => $out, 'err' => $err, 'status' => $status];
    }

    /**
     * The receipts of the message with Message-ID $msgid: every message of every folder
     * whose X-Riferimento-Message-ID is $msgid, verified by pecora; the genuine ones for
     * this message are grouped by PEC identifier, the others listed apart.
     */
    private function receipts($msgid)
    {
        $rcmail = rcmail::get_instance();
        $storage = $rcmail->storage;
        $msgid = trim((string) $msgid);
        if ($msgid === '' || preg_match('/["\\\\\r\n]/', $msgid)) {
            return null;
        }
        $bare = trim($msgid, '<> ');
        $current = $storage->get_folder();
        // Each receipt is saved to a private temporary file (tempnam: mode 0600) as it is
        // read, so that one pecora process verifies them all and no more than one is held
        // in memory at a time. Roundcube's temp directory, as rcube_utils::temp_filename
        // picks it; the prefix lets Roundcube's garbage collection sweep any left behind.
        $dir = (string) $rcmail->config->get('temp_dir');
        if (!is_writable($dir)) {
            $dir = sys_get_temp_dir();
        }
        $prefix = (defined('RCUBE_TEMP_FILE_PREFIX') ? RCUBE_TEMP_FILE_PREFIX : '') . 'pecora';
        $saved = [];
        $found = [];
        try {
            foreach ($storage->list_folders_subscribed('', '*', 'mail') as $folder) {
                $result = $storage->search_once($folder, 'HEADER X-Riferimento-Message-ID "' . $bare . '"');
                $uids = $result ? $result->get() : [];
                if (empty($uids)) {
                    continue;
                }
                $storage->set_folder($folder);
                foreach (array_slice($uids, 0, 200) as $uid) {
                    $raw = $storage->get_raw_body($uid);
                    if (!is_string($raw) || $raw === '') {
                        $found[] = ['error' => 'the message could not be read from the mailbox', 'folder' => $folder, 'uid' => $uid];
                    }
                    else {
                        $path = @tempnam($dir, $prefix);
                        if ($path !== false && @file_put_contents($path, $raw) === strlen($raw)) {
                            $saved[$path] = [$folder, $uid];
                        }
                        else {
                            $found[] = ['error' => 'the message could not be saved for pecora verify', 'folder' => $folder, 'uid' => $uid];
                            if ($path !== false) {
                                @unlink($path);
                            }
                        }
                    }
                    unset($raw);
                }
            }
            foreach ($this->verify_files(array_keys($saved)) as $path => $v) {
                list($v['folder'], $v['uid']) = $saved[$path];
                $found[] = $v;
            }
        }
        finally {
            foreach (array_keys($saved) as $path) {
                @unlink($path);
            }
            $storage->set_folder($current);
        }

        $groups = [];
        $other = [];
        foreach ($found as $v) {
            $ours = !empty($v['genuine']) && ($v['kind'] ?? '') !== 'posta-certificata'
                && trim((string) ($v['msgid'] ?? ''), '<> ') === $bare;
            if ($ours) {
                $groups[$v['identificativo']][] = $v;
            }
            else if (($v['kind'] ?? '') !== 'posta-certificata') {
                $other[] = $v;
            }
        }
        // By certified time; within one second, in the order a transaction produces them.
        $rank = array_flip(['accettazione', 'non-accettazione', 'presa-in-carico', 'avvenuta-consegna',
            'rilevazione-virus', 'errore-consegna', 'preavviso-errore-consegna']);
        foreach ($groups as &$list) {
            usort($list, function ($a, $b) use ($rank) {
                $at = strtotime($a['date']) <=> strtotime($b['date']);
                return $at ?: (($rank[$a['kind']] ?? 9) <=> ($rank[$b['kind']] ?? 9));
            });
        }
        unset($list);
        return ['groups' => $groups, 'other' => $other];
    }

    /** The banner, or the timeline, above the message body. */
    public function message_objects($args)
    {
        if ($this->verdict !== null) {
            array_unshift($args['content'], $this->banner($this->verdict));
        }
        else if ($this->timeline !== null) {
            array_unshift($args['content'], $this->timeline_html($this->timeline));
        }
        return $args;
    }

    private function banner($v)
    {
        $rows = [];
        if (!empty($v['error'])) {
            $title = $this->gettext('verifyfailed');
            $class = 'pecora-banner pecora-unknown';
            $rows[] = [$this->gettext('reason'), $v['error']];
        }
        else if (!empty($v['genuine'])) {
            $kind = $v['kind'];
            $class = 'pecora-banner pecora-genuine';
            $title = $kind === 'posta-certificata' ? $this->gettext('certified') : $this->gettext('kind_' . $kind);
            $rows[] = [$this->gettext('verdict'), $this->gettext('genuine')];
            $rows[] = [$this->gettext('sender'), $v['sender']];
            $rows[] = [$this->gettext('provider'), $v['provider']];
            $rows[] = [$this->gettext('date'), self::date_text($v['date'])];
            if (!empty($v['consegna'])) {
                $rows[] = [$this->gettext('deliveredto'), $v['consegna']];
            }
            if (!empty($v['receipt_type'])) {
                $rows[] = [$this->gettext('receipttype'), $this->gettext('receipt_' . $v['receipt_type'])];
            }
            if (($v['errore'] ?? 'nessuno') !== 'nessuno') {
                $rows[] = [$this->gettext('error'), $v['errore']];
            }
            $rows[] = [$this->gettext('identifier'), $v['identificativo']];
            if ($kind === 'posta-certificata') {
                $rows[] = ['', $this->gettext('originalbelow')];
            }
        }
        else if (($v['kind'] ?? '') === 'anomalia') {
            $class = 'pecora-banner pecora-anomaly';
            $title = $this->gettext('anomaly');
            $rows[] = [$this->gettext('verdict'), $this->gettext('notcertified')];
            $rows[] = [$this->gettext('reason'), $v['anomaly']['reason'] ?? $v['reason']];
            $rows[] = [$this->gettext('anomalyby'), $v['anomaly']['provider']];
        }
        else {
            $class = 'pecora-banner pecora-forged';
            $title = $this->gettext('notgenuine');
            $rows[] = [$this->gettext('verdict'), $this->gettext('notcertified')];
            $rows[] = [$this->gettext('reason'), $v['reason']];
        }
        $table = '';
        foreach ($rows as $r) {
            $table .= html::tag('tr', null,
                html::tag('th', null, rcube::Q($r[0])) . html::tag('td', null, rcube::Q((string) $r[1])));
        }
        return html::div(['class' => $class, 'id' => 'pecora-banner', 'data-kind' => $v['kind'] ?? 'error',
                'data-genuine' => !empty($v['genuine']) ? 'yes' : 'no'],
            html::div('pecora-title', rcube::Q($title)) . html::tag('table', 'pecora-facts', $table));
    }

    private function timeline_html($t)
    {
        $body = '';
        if (empty($t['groups']) && empty($t['other'])) {
            $body .= html::p('pecora-none', rcube::Q($this->gettext('noreceipts')));
        }
        foreach ($t['groups'] as $id => $list) {
            $items = '';
            foreach ($list as $v) {
                $who = $v['consegna'] ?: implode(', ', array_map(function ($r) { return $r['address']; }, $v['recipients']));
                $extra = [];
                if (!empty($v['receipt_type'])) {
                    $extra[] = $this->gettext('receipt_' . $v['receipt_type']);
                }
                if (($v['errore'] ?? 'nessuno') !== 'nessuno') {
                    $extra[] = $this->gettext('error') . ': ' . $v['errore'];
                }
                $items .= html::tag('tr', ['class' => 'pecora-receipt pecora-kind-' . $v['kind'], 'data-kind' => $v['kind'],
                        'data-receipt-type' => (string) ($v['receipt_type'] ?? '')],
                    html::tag('td', 'pecora-when', rcube::Q(self::date_text($v['date'])))
                    . html::tag('td', 'pecora-what', rcube::Q($this->gettext('kind_' . $v['kind'])))
                    . html::tag('td', 'pecora-who', rcube::Q($who))
                    . html::tag('td', 'pecora-extra', rcube::Q(implode(' · ', $extra)))
                    . html::tag('td', 'pecora-ok', rcube::Q($this->gettext('genuine') . ' (' . $v['provider'] . ')')));
            }
            $body .= html::div('pecora-group',
                html::div('pecora-id', rcube::Q($this->gettext('identifier') . ': ' . $id))
                . html::tag('table', 'pecora-facts pecora-receipts', $items));
        }
        if (!empty($t['other'])) {
            $items = '';
            foreach ($t['other'] as $v) {
                $items .= html::tag('tr', 'pecora-rejected', html::tag('td', null,
                    rcube::Q($this->gettext('notgenuine') . ': ' . ($v['reason'] ?? $v['error'] ?? ''))));
            }
            $body .= html::tag('table', 'pecora-facts pecora-receipts', $items);
        }
        return html::div(['class' => 'pecora-timeline', 'id' => 'pecora-timeline'],
            html::div('pecora-title', rcube::Q($this->gettext('timeline'))) . $body);
    }

    /** An RFC 3339 instant from pecora, as the holder reads it (pecora's own time zone). */
    private static function date_text($rfc3339)
    {
        try {
            $d = new DateTime((string) $rfc3339);
            return $d->format('d/m/Y H:i:s') . ' (' . $d->format('P') . ')';
        }
        catch (Exception $e) {
            return (string) $rfc3339;
        }
    }

    /** The receipt type chosen in compose, as X-TipoRicevuta (absent means completa). */
    public function message_before_send($args)
    {
        $type = rcube_utils::get_input_string('_pecora_receipt', rcube_utils::INPUT_POST);
        if (in_array($type, self::RECEIPT_TYPES, true) && $type !== 'completa') {
            $args['message']->headers(['X-TipoRicevuta' => $type], true);
        }
        return $args;
    }
}
