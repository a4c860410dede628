// The generator page's script. The rules (patterns, messages, limits, names) come
// from the JSON that `ec2ami userdata --page` embeds, made from the Rust tables in
// src/userdata/rules.rs; generate() below is a line-by-line port of
// src/userdata/generate.rs (and yaml.rs, tar.rs). tests/integration/userdata.rs drives
// this page in Chromium over a table of cases and compares its bytes with the
// command's.
(function () {
  'use strict';
  var R = JSON.parse(document.getElementById('rules').textContent);
  var enc = new TextEncoder();

  // ---- the rules --------------------------------------------------------------
  function compile(rules) {
    return rules.map(function (r) { return { re: new RegExp(r.pattern, 'u'), message: r.message }; });
  }
  var C = {
    rc: compile(R.rc_line), package: compile(R.package), service: compile(R.service),
    hostname: compile(R.hostname), path: compile(R.path)
  };
  function firstBroken(list, v) {
    for (var i = 0; i < list.length; i++) { if (!list[i].re.test(v)) { return list[i].message; } }
    return null;
  }
  function fill(t, pairs) {
    for (var i = 0; i < pairs.length; i++) { t = t.split('{' + pairs[i][0] + '}').join(pairs[i][1]); }
    return t;
  }
  function splitRc(line) {
    if (firstBroken(C.rc, line) !== null) { return null; }
    var eq = line.indexOf('=');
    return [line.slice(0, eq), line.slice(eq + 2, line.length - 1)];
  }
  function serviceOf(name) {
    for (var i = 0; i < R.common_services.length; i++) {
      if (R.common_services[i].name === name) { return R.common_services[i]; }
    }
    return null;
  }

  // ---- bytes --------------------------------------------------------------------
  function concat(list) {
    var n = 0, i;
    for (i = 0; i < list.length; i++) { n += list[i].length; }
    var out = new Uint8Array(n), off = 0;
    for (i = 0; i < list.length; i++) { out.set(list[i], off); off += list[i].length; }
    return out;
  }
  function startsWith(bytes, prefix) {
    var p = enc.encode(prefix);
    if (bytes.length < p.length) { return false; }
    for (var i = 0; i < p.length; i++) { if (bytes[i] !== p[i]) { return false; } }
    return true;
  }
  function base64(bytes) {
    var s = '';
    for (var i = 0; i < bytes.length; i += 0x8000) {
      s += String.fromCharCode.apply(null, bytes.subarray(i, i + 0x8000));
    }
    return btoa(s);
  }
  function utf8(bytes, fatal) {
    try { return new TextDecoder('utf-8', { fatal: fatal, ignoreBOM: true }).decode(bytes); } catch (e) { return null; }
  }

  // ---- tar (tar.rs) -----------------------------------------------------------
  function octal(h, off, len, v) {
    var s = v.toString(8);
    while (s.length < len - 1) { s = '0' + s; }
    for (var i = 0; i < len - 1; i++) { h[off + i] = s.charCodeAt(i); }
    h[off + len - 1] = 0;
  }
  function tar(entries) {
    var blocks = [];
    entries.forEach(function (e) {
      var h = new Uint8Array(512), name = enc.encode(e.name), i;
      h.set(name, 0);
      octal(h, 100, 8, e.mode); octal(h, 108, 8, 0); octal(h, 116, 8, 0);
      octal(h, 124, 12, e.data.length); octal(h, 136, 12, 0);
      h[156] = 48;
      h.set(enc.encode('ustar\u0000'), 257); h.set(enc.encode('00'), 263);
      octal(h, 329, 8, 0); octal(h, 337, 8, 0);
      for (i = 148; i < 156; i++) { h[i] = 32; }
      var sum = 0;
      for (i = 0; i < 512; i++) { sum += h[i]; }
      var s = sum.toString(8);
      while (s.length < 6) { s = '0' + s; }
      h.set(enc.encode(s + '\u0000 '), 148);
      blocks.push(h, e.data, new Uint8Array((512 - e.data.length % 512) % 512));
    });
    blocks.push(new Uint8Array(1024));
    return concat(blocks);
  }

  // ---- YAML (yaml.rs) ---------------------------------------------------------
  function needsEscape(cp) {
    return cp < 0x20 || (cp >= 0x7f && cp <= 0x9f) || cp === 0x2028 || cp === 0x2029 || cp === 0xfeff;
  }
  function quote(s) {
    var out = '"';
    for (var ch of s) {
      var cp = ch.codePointAt(0);
      if (ch === '\\') { out += '\\\\'; } else if (ch === '"') { out += '\\"'; } else if (ch === '\n') { out += '\\n'; } else if (ch === '\t') { out += '\\t'; } else if (needsEscape(cp)) {
        var hex = cp.toString(16);
        while (hex.length < 4) { hex = '0' + hex; }
        out += '\\u' + hex;
      } else { out += ch; }
    }
    return out + '"';
  }
  function blockText(bytes) {
    var text = utf8(bytes, true);
    if (text === null || text === '' || text.endsWith('\n\n')) { return null; }
    for (var ch of text) {
      if (ch !== '\n' && ch !== '\t' && needsEscape(ch.codePointAt(0))) { return null; }
    }
    var body = text.endsWith('\n') ? text.slice(0, -1) : text;
    var lines = body.split('\n');
    var first = lines[0];
    if (first === '' || first[0] === ' ' || first[0] === '\t') { return null; }
    for (var i = 0; i < lines.length; i++) {
      if (lines[i] !== '' && /^[ \t]*$/.test(lines[i])) { return null; }
    }
    return text;
  }
  function block(text, indent) {
    var indicator = '|-', body = text;
    if (text.endsWith('\n')) { indicator = '|'; body = text.slice(0, -1); }
    var pad = ' '.repeat(indent), out = indicator + '\n';
    body.split('\n').forEach(function (line) { out += (line === '' ? '' : pad + line) + '\n'; });
    return out;
  }

  // ---- the generator (generate.rs) ------------------------------------------
  function problem(field, index, message) { return { field: field, index: index, message: message }; }

  function interpreter(firstLine) {
    var i = 2, j;
    while (i < firstLine.length && (firstLine[i] === 32 || firstLine[i] === 9)) { i++; }
    j = i;
    while (j < firstLine.length && [32, 9, 13, 10].indexOf(firstLine[j]) < 0) { j++; }
    return utf8(firstLine.subarray(i, j), false);
  }

  function scriptProblems(script, flavour) {
    var errors = [], warnings = [];
    if (!startsWith(script, R.script_prefix)) { errors.push(R.messages.script_prefix); return [errors, warnings]; }
    var nl = script.indexOf(10);
    var first = nl < 0 ? script : script.subarray(0, nl);
    if (first.length > 0 && first[first.length - 1] === 13) { errors.push(R.messages.script_crlf); }
    var interp = interpreter(first);
    if (R.base_interpreters.indexOf(interp) < 0) {
      if (interp.startsWith('/usr/local/')) {
        if (flavour === 'base') { warnings.push(fill(R.messages.interpreter_package, [['interpreter', interp]])); }
      } else {
        warnings.push(fill(R.messages.interpreter_unknown, [['interpreter', interp]]));
      }
    }
    return [errors, warnings];
  }

  function generate(spec) {
    var errors = [], warnings = [], base = spec.flavour === 'base', m;
    spec.packages.forEach(function (p, i) {
      m = firstBroken(C.package, p);
      if (m !== null) { errors.push(problem('packages', i, m)); }
    });
    [['enable', spec.enable], ['disable', spec.disable]].forEach(function (fl) {
      fl[1].forEach(function (s, i) {
        m = firstBroken(C.service, s);
        if (m !== null) { errors.push(problem(fl[0], i, m)); }
      });
    });
    spec.enable.forEach(function (s, i) {
      var c = serviceOf(s);
      if (c && c.package && spec.packages.indexOf(c.package) < 0) {
        warnings.push(problem('enable', i, fill(R.messages.service_package, [['service', s], ['package', c.package]])));
      }
    });
    if (spec.hostname !== null) {
      m = firstBroken(C.hostname, spec.hostname);
      if (m !== null) { errors.push(problem('hostname', null, m)); }
    }
    if (spec.freebsd_update !== null && !base) {
      errors.push(problem('freebsd_update', null, R.messages.update_cloud_init));
    }
    spec.rc.forEach(function (line, i) {
      m = firstBroken(C.rc, line);
      if (m !== null) { errors.push(problem('rc', i, m)); }
    });
    var vars = [];
    if (base && spec.packages.length > 0) {
      vars.push(['firstboot_pkgs_list', spec.packages.join(' '), 'packages', null]);
    }
    if (base && spec.freebsd_update !== null) {
      R.update_vars.forEach(function (v) { vars.push([v, spec.freebsd_update ? 'YES' : 'NO', 'freebsd_update', null]); });
    }
    if (spec.hostname !== null) { vars.push(['hostname', spec.hostname, 'hostname', null]); }
    spec.rc.forEach(function (line, i) {
      var nv = splitRc(line);
      if (nv !== null) { vars.push([nv[0], nv[1], 'rc', i]); }
    });
    [['enable', spec.enable, 'YES'], ['disable', spec.disable, 'NO']].forEach(function (fl) {
      fl[1].forEach(function (s, i) { vars.push([s + '_enable', fl[2], fl[0], i]); });
    });
    vars.forEach(function (v, k) {
      for (var j = 0; j < k; j++) {
        if (vars[j][0] === v[0]) { errors.push(problem(v[2], v[3], fill(R.messages.duplicate, [['name', v[0]]]))); return; }
      }
    });
    spec.files.forEach(function (f, i) {
      m = firstBroken(C.path, f.path);
      if (m !== null) { errors.push(problem('file', i, m)); }
    });
    if (spec.script !== null) {
      var sp = scriptProblems(spec.script, spec.flavour);
      sp[0].forEach(function (e) { errors.push(problem('script', null, e)); });
      sp[1].forEach(function (w) { warnings.push(problem('script', null, w)); });
    }
    var nothing = spec.packages.length === 0 && spec.enable.length === 0 && spec.disable.length === 0 &&
      spec.rc.length === 0 && spec.files.length === 0 && spec.script === null && spec.hostname === null &&
      spec.freebsd_update === null;
    if (nothing) { errors.push(problem('nothing', null, R.messages.nothing)); }
    if (errors.length > 0) { return { errors: errors, warnings: warnings }; }
    var g = base ? baseFlavour(spec, vars) : cloudInit(spec);
    g.warnings = warnings;
    g.errors = [];
    if (g.data.length > R.limit_bytes) {
      g.errors = [problem('size', null, fill(R.messages.too_big, [['bytes', String(g.data.length)], ['limit', String(R.limit_bytes)]]))];
    }
    return g;
  }

  function baseFlavour(spec, vars) {
    var parts = [];
    if (vars.length > 0) {
      var text = '>>' + R.rc_conf + '\n';
      vars.forEach(function (v) { text += v[0] + '="' + v[1] + '"\n'; });
      parts.push(['rc.conf', 'append', R.rc_conf, enc.encode(text)]);
    }
    if (spec.hostname !== null) {
      parts.push(['hostname', 'script', null, enc.encode(fill(R.hostname_script, [['hostname', spec.hostname]]))]);
    }
    spec.files.forEach(function (f) {
      var marker = f.append ? '>>' : '>';
      parts.push(['file', f.append ? 'append' : 'write', f.path, concat([enc.encode(marker + f.path + '\n'), f.content])]);
    });
    if (spec.script !== null) { parts.push(['script', 'script', null, spec.script]); }
    parts = parts.map(function (p, i) {
      var n = String(i + 1);
      if (n.length < 2) { n = '0' + n; }
      return { name: n + '-' + p[0], kind: p[1], path: p[2], data: p[3] };
    });
    var format, data;
    if (parts.length === 1) {
      format = 'part'; data = parts[0].data;
    } else {
      format = 'tar';
      data = tar(parts.map(function (p) { return { name: p.name, mode: p.kind === 'script' ? 493 : 420, data: p.data }; }));
    }
    return { flavour: 'base', format: format, parts: parts, data: data };
  }

  function writeFile(path, append, permissions, content) {
    var out = '  - path: ' + quote(path) + '\n';
    if (append) { out += '    append: true\n'; }
    if (permissions !== null) { out += '    permissions: ' + quote(permissions) + '\n'; }
    out += '    defer: true\n';
    var text = blockText(content);
    if (content.length === 0) {
      out += '    content: ""\n';
    } else if (text !== null) {
      out += '    content: ' + block(text, 6);
    } else {
      out += '    encoding: b64\n    content: ' + quote(base64(content)) + '\n';
    }
    return out;
  }
  function command(args) { return '  - [' + args.map(quote).join(', ') + ']\n'; }

  function cloudInit(spec) {
    var out = '#cloud-config\n';
    if (spec.hostname !== null) { out += 'hostname: ' + quote(spec.hostname) + '\n'; }
    if (spec.packages.length > 0) {
      out += 'packages:\n';
      spec.packages.forEach(function (p) { out += '  - ' + quote(p) + '\n'; });
    }
    if (spec.files.length > 0 || spec.script !== null) {
      out += 'write_files:\n';
      spec.files.forEach(function (f) { out += writeFile(f.path, f.append, null, f.content); });
      if (spec.script !== null) { out += writeFile(R.cloud_init_script_path, false, '0700', spec.script); }
    }
    if (spec.rc.length > 0 || spec.enable.length > 0 || spec.disable.length > 0 || spec.script !== null) {
      out += 'runcmd:\n';
      spec.rc.forEach(function (line) {
        var nv = splitRc(line);
        if (nv !== null) { out += command(['sysrc', nv[0] + '=' + nv[1]]); }
      });
      spec.enable.forEach(function (s) { out += command(['sysrc', s + '_enable=YES']); });
      spec.disable.forEach(function (s) { out += command(['sysrc', s + '_enable=NO']); });
      spec.enable.forEach(function (s) { out += command(['service', s, 'start']); });
      spec.disable.forEach(function (s) { out += command(['service', s, 'onestop']); });
      if (spec.script !== null) { out += command([R.cloud_init_script_path]); }
    }
    return { flavour: 'cloud-init', format: 'cloud-config', parts: [], data: enc.encode(out) };
  }

  // ---- the form ----------------------------------------------------------------
  var $ = function (id) { return document.getElementById(id); };
  var files = [];      // {id, loaded: {name, bytes} | null}
  var nextFile = 0;
  var scriptLoaded = null;
  var pending = 0;
  var last = null;

  function words(s) { return s.split(/[ \t\n]+/).filter(function (w) { return w !== ''; }); }

  function checkbox(container, id, value, label, about) {
    var l = document.createElement('label');
    var box = document.createElement('input');
    box.type = 'checkbox'; box.id = id; box.value = value;
    l.appendChild(box);
    l.appendChild(document.createTextNode(' ' + label + ' '));
    var s = document.createElement('span');
    s.className = 'about'; s.textContent = '(' + about + ')';
    l.appendChild(s);
    container.appendChild(l);
  }

  function rcLines() {
    // Each non-blank line, with its line number in the text area.
    var out = [];
    $('rc').value.split('\n').forEach(function (line, i) {
      if (line.trim() !== '') { out.push({ line: line, number: i + 1 }); }
    });
    return out;
  }

  function fileContent(f) {
    if (f.loaded !== null) { return f.loaded.bytes; }
    return enc.encode($('file-' + f.id + '-content').value);
  }

  function currentSpec() {
    var flavour = $('flavour-cloud-init').checked ? 'cloud-init' : 'base';
    var packages = [], enable = [];
    R.common_packages.forEach(function (p, i) { if ($('pkg-' + i).checked) { packages.push(p.name); } });
    packages = packages.concat(words($('more-packages').value));
    R.common_services.forEach(function (s, i) { if ($('svc-' + i).checked) { enable.push(s.name); } });
    enable = enable.concat(words($('more-enable').value));
    var update = $('freebsd-update').value;
    var script = null;
    if (scriptLoaded !== null) { script = scriptLoaded.bytes; } else if ($('script').value !== '') { script = enc.encode($('script').value); }
    return {
      flavour: flavour,
      packages: packages,
      enable: enable,
      disable: words($('disable').value),
      rc: rcLines().map(function (l) { return l.line; }),
      files: files.map(function (f) {
        return { path: $('file-' + f.id + '-path').value, append: $('file-' + f.id + '-mode').value === 'append', content: fileContent(f) };
      }),
      script: script,
      hostname: $('hostname').value === '' ? null : $('hostname').value,
      freebsd_update: update === '' ? null : update === 'yes'
    };
  }

  // Where each field's problems are shown, and the control marked invalid.
  function target(p, spec) {
    var commonPkgs = spec.packages.length - words($('more-packages').value).length;
    var commonSvcs = spec.enable.length - words($('more-enable').value).length;
    switch (p.field) {
      case 'packages': return { error: 'packages-error', control: p.index !== null && p.index >= commonPkgs ? 'more-packages' : null, item: p.index !== null ? spec.packages[p.index] : null };
      case 'enable': return { error: 'enable-error', control: p.index !== null && p.index >= commonSvcs ? 'more-enable' : 'svc-' + p.index, item: spec.enable[p.index] };
      case 'disable': return { error: 'disable-error', control: 'disable', item: spec.disable[p.index] };
      case 'rc': return { error: 'rc-error', control: 'rc', line: rcLines()[p.index].number };
      case 'file': return { error: 'file-' + files[p.index].id + '-error', control: 'file-' + files[p.index].id + '-path' };
      case 'script': return { error: 'script-error', control: 'script' };
      case 'hostname': return { error: 'hostname-error', control: 'hostname' };
      case 'freebsd_update': return { error: 'freebsd-update-error', control: 'freebsd-update' };
      default: return { error: null, control: null };
    }
  }

  var FIELD_NAMES = {
    packages: 'Packages', enable: 'Services to enable', disable: 'Services to disable', rc: 'rc.conf settings',
    file: 'File', script: 'Script', hostname: 'Hostname', freebsd_update: 'First-boot FreeBSD update',
    size: 'User data', nothing: 'User data'
  };

  function describe(p, t) {
    var where = FIELD_NAMES[p.field];
    if (p.field === 'file') { where += ' ' + (p.index + 1); }
    if (t.line) { where += ', line ' + t.line; }
    if (t.item) { where += ', ' + t.item; }
    return where;
  }

  function render() {
    var spec = currentSpec();
    var g = generate(spec);
    last = g;
    document.querySelectorAll('.error').forEach(function (e) { e.textContent = ''; });
    document.querySelectorAll('[aria-invalid]').forEach(function (e) { e.removeAttribute('aria-invalid'); });
    var problems = $('problems');
    problems.textContent = '';
    var list = document.createElement('ul');
    g.errors.forEach(function (p) {
      var t = target(p, spec);
      var text = (t.line ? 'line ' + t.line + ': ' : '') + (t.item ? t.item + ': ' : '') + p.message;
      if (t.error) {
        var e = $(t.error);
        e.textContent = (e.textContent ? e.textContent + '\n' : '') + text;
      }
      if (t.control && $(t.control)) { $(t.control).setAttribute('aria-invalid', 'true'); }
      var li = document.createElement('li');
      li.className = 'problem';
      li.setAttribute('data-field', p.field);
      li.setAttribute('data-message', p.message);
      li.textContent = describe(p, t) + ': ' + p.message;
      list.appendChild(li);
    });
    g.warnings.forEach(function (p) {
      var t = target(p, spec);
      var li = document.createElement('li');
      li.className = 'warning';
      li.setAttribute('data-message', p.message);
      li.textContent = 'warning: ' + describe(p, t) + ': ' + p.message;
      list.appendChild(li);
    });
    if (list.childNodes.length > 0) { problems.appendChild(list); }
    var ok = g.errors.length === 0;
    var link = $('download');
    $('copy').disabled = !ok || g.format === 'tar';
    $('copy-base64').disabled = !ok;
    if (ok) {
      link.setAttribute('href', 'data:application/octet-stream;base64,' + base64(g.data));
      link.removeAttribute('aria-disabled');
      link.setAttribute('download', g.format === 'tar' ? 'user-data.tar' : 'user-data');
    } else {
      link.removeAttribute('href');
      link.setAttribute('aria-disabled', 'true');
    }
    $('output').value = ok ? preview(g) : '';
    var what = { part: 'One configinit part', tar: 'A tar archive of ' + (g.parts ? g.parts.length : 0) + ' configinit parts, processed in this order', 'cloud-config': 'A #cloud-config document' };
    $('summary').textContent = ok
      ? what[g.format] + ': ' + g.data.length + ' of ' + R.limit_bytes + ' bytes.'
      : g.errors.length + (g.errors.length === 1 ? ' problem' : ' problems') + ' to fix before the user data can be made.';
    document.body.setAttribute('data-state', ok ? 'ok' : 'error');
  }

  function preview(g) {
    if (g.format !== 'tar') {
      var t = utf8(g.data, true);
      return t !== null ? t : '(binary data, ' + g.data.length + ' bytes: download it)';
    }
    return g.parts.map(function (p) {
      var t = utf8(p.data, true);
      return '==> ' + p.name + ' <==\n' + (t !== null ? t : '(binary, ' + p.data.length + ' bytes)\n');
    }).join('\n');
  }

  function readFile(input, done) {
    var f = input.files && input.files[0];
    if (!f) { return; }
    pending++;
    document.body.setAttribute('data-pending', pending);
    var reader = new FileReader();
    reader.onload = function () {
      done({ name: f.name, bytes: new Uint8Array(reader.result) });
      pending--;
      document.body.setAttribute('data-pending', pending);
      render();
    };
    reader.onerror = function () {
      pending--;
      document.body.setAttribute('data-pending', pending);
      $('status').textContent = 'Could not read ' + f.name;
    };
    reader.readAsArrayBuffer(f);
  }

  function showLoaded(textarea, note, loaded) {
    var text = utf8(loaded.bytes, true);
    if (text !== null) {
      textarea.value = text;
      note.textContent = 'Loaded ' + loaded.name + ' (' + loaded.bytes.length + ' bytes); editing the text replaces it.';
    } else {
      textarea.value = '';
      note.textContent = 'Loaded ' + loaded.name + ': ' + loaded.bytes.length + ' bytes of binary data; typing text replaces it.';
    }
  }

  function addFile() {
    var f = { id: nextFile++, loaded: null };
    files.push(f);
    var n = files.length;
    var set = document.createElement('fieldset');
    set.className = 'file';
    set.id = 'file-' + f.id;
    var pre = 'file-' + f.id + '-';
    set.innerHTML =
      '<legend>File ' + n + '</legend>' +
      '<label for="' + pre + 'path">Path on the instance (absolute)</label>' +
      '<input type="text" id="' + pre + 'path" autocomplete="off" spellcheck="false" aria-describedby="' + pre + 'error">' +
      '<label for="' + pre + 'mode">What to do with it</label>' +
      '<select id="' + pre + 'mode"><option value="write">write it (replace the file)</option><option value="append">append to it</option></select>' +
      '<label for="' + pre + 'content">Content</label>' +
      '<textarea id="' + pre + 'content" rows="5" spellcheck="false" aria-describedby="' + pre + 'note"></textarea>' +
      '<label for="' + pre + 'load">Load the content from a file</label>' +
      '<input type="file" id="' + pre + 'load">' +
      '<p id="' + pre + 'note" class="help"></p>' +
      '<p id="' + pre + 'error" class="error" aria-live="polite"></p>' +
      '<button type="button" id="' + pre + 'remove">Remove file ' + n + '</button>';
    $('files').appendChild(set);
    $(pre + 'content').addEventListener('input', function () { f.loaded = null; $(pre + 'note').textContent = ''; });
    $(pre + 'load').addEventListener('change', function () {
      readFile($(pre + 'load'), function (loaded) { f.loaded = loaded; showLoaded($(pre + 'content'), $(pre + 'note'), loaded); });
    });
    $(pre + 'remove').addEventListener('click', function () {
      files.splice(files.indexOf(f), 1);
      set.parentNode.removeChild(set);
      renumber();
      render();
      $('add-file').focus();
      $('status').textContent = 'File removed.';
    });
    render();
    $(pre + 'path').focus();
  }

  function renumber() {
    files.forEach(function (f, i) {
      var set = $('file-' + f.id);
      set.querySelector('legend').textContent = 'File ' + (i + 1);
      $('file-' + f.id + '-remove').textContent = 'Remove file ' + (i + 1);
    });
  }

  function copy(text, what) {
    var done = function () { $('status').textContent = 'Copied ' + what + '.'; };
    var fallback = function () {
      var t = document.createElement('textarea');
      t.value = text;
      t.setAttribute('aria-hidden', 'true');
      t.style.position = 'fixed'; t.style.opacity = '0';
      document.body.appendChild(t);
      t.select();
      var ok = false;
      try { ok = document.execCommand('copy'); } catch (e) { ok = false; }
      document.body.removeChild(t);
      if (ok) { done(); } else { $('status').textContent = 'Copying failed: select the text and press Ctrl+C.'; }
    };
    if (navigator.clipboard && navigator.clipboard.writeText) {
      navigator.clipboard.writeText(text).then(done, fallback);
    } else { fallback(); }
  }

  function init() {
    R.common_packages.forEach(function (p, i) { checkbox($('common-packages'), 'pkg-' + i, p.name, p.name, p.about); });
    R.common_services.forEach(function (s, i) {
      checkbox($('common-services'), 'svc-' + i, s.name, 'enable ' + s.name, s.about + (s.package ? ', package ' + s.package : ''));
    });
    $('rc-help').textContent = 'Known: ' + R.known_vars.map(function (v) { return v.name; }).join(', ') + '.';
    $('form').addEventListener('input', render);
    $('form').addEventListener('change', render);
    $('form').addEventListener('submit', function (e) { e.preventDefault(); });
    $('add-file').addEventListener('click', addFile);
    $('script').addEventListener('input', function () { scriptLoaded = null; $('script-note').textContent = ''; });
    $('script-load').addEventListener('change', function () {
      readFile($('script-load'), function (loaded) { scriptLoaded = loaded; showLoaded($('script'), $('script-note'), loaded); });
    });
    $('copy').addEventListener('click', function () {
      if (last && last.errors.length === 0) { copy(utf8(last.data, false), 'the user data (' + last.data.length + ' bytes)'); }
    });
    $('copy-base64').addEventListener('click', function () {
      if (last && last.errors.length === 0) { var b = base64(last.data); copy(b, 'the base64 (' + b.length + ' characters)'); }
    });
    $('download').addEventListener('click', function (e) {
      if (!$('download').hasAttribute('href')) { e.preventDefault(); $('status').textContent = 'Fix the problems first.'; }
    });
    render();
    document.body.setAttribute('data-pending', '0');
    document.body.setAttribute('data-ready', 'true');
  }

  window.ec2amiUserdata = { generate: generate };
  init();
}());
