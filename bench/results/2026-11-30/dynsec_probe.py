import sys, time, subprocess, json, shutil
sys.path.insert(0, "/work/wt/kiosk-identity")
from pathlib import Path
from tests.tls_certs import TestCA
import paho.mqtt.client as mqtt
from paho.mqtt.enums import CallbackAPIVersion
d = Path("/tmp/kx/dyn"); shutil.rmtree(d, ignore_errors=True); d.mkdir()
ca = TestCA(d/"ca"); srv = ca.server("broker", ["127.0.0.1"])
subprocess.run(["mosquitto_ctrl","dynsec","init",str(d/"dynsec.json"),"controller","pw"],check=True, capture_output=True)
conf = d/"m.conf"
conf.write_text(f"""listener 18884 127.0.0.1
cafile {ca.cert}
certfile {srv.cert}
keyfile {srv.key}
require_certificate true
use_identity_as_username true
use_username_as_clientid true
plugin /usr/lib/x86_64-linux-gnu/mosquitto_dynamic_security.so
plugin_opt_config_file {d/'dynsec.json'}
user root
log_dest stderr
log_type error
log_type warning
log_type notice
""")
p = subprocess.Popen(["/usr/sbin/mosquitto","-c",str(conf)], stderr=open(d/"log","w"))
time.sleep(0.5)
import atexit; atexit.register(lambda: (p.terminate(), p.wait()))
def cl(name):
    i = ca.client(name)
    c = mqtt.Client(CallbackAPIVersion.VERSION2, client_id=name, protocol=mqtt.MQTTv5)
    c.tls_set(ca_certs=str(ca.cert), certfile=str(i.cert), keyfile=str(i.key))
    c.got=[]; c.log=[]
    c.on_message=lambda cl,u,m: c.got.append((m.topic,m.payload))
    c.on_subscribe=lambda cl,u,mid,rcs,pr: c.log.append(("suback",[hex(r.value) for r in rcs]))
    c.on_publish=lambda cl,u,mid,rc,pr: c.log.append(("puback",mid, hex(rc.value)))
    c.on_connect=lambda cl,u,f,rc,pr: c.log.append(("connack",str(rc)))
    c.on_disconnect=lambda cl,u,f,rc,pr: c.log.append(("disc",str(rc), time.time()))
    c.connect("127.0.0.1", 18884); c.loop_start(); time.sleep(0.3); return c
ctl = cl("controller"); ctl.subscribe("$CONTROL/dynamic-security/v1/response",1); ctl.subscribe("fleet/v1/#",1); time.sleep(0.2)
def cmd(*cmds, kicked=False):
    global ctl
    ctl.publish("$CONTROL/dynamic-security/v1", json.dumps({"commands": list(cmds)}),1); time.sleep(0.3)
    if kicked:
        time.sleep(0.5); ctl = cl("controller"); ctl.subscribe("$CONTROL/dynamic-security/v1/response",1); ctl.subscribe("fleet/v1/#",1); time.sleep(0.3); return
    print("resp", [g[1][:200] for g in ctl.got if g[0].startswith("$CONTROL")][-1:])
cmd({"command":"createRole","rolename":"kiosk","acls":[
  {"acltype":"publishClientSend","topic":"fleet/v1/%u/telemetry","allow":True},
  {"acltype":"subscribePattern","topic":"fleet/v1/%u/cmd/#","allow":True},
  {"acltype":"publishClientSend","topic":"fleet/v1/%c/events","allow":True}]},
  {"command":"createClient","username":"wx-a","roles":[{"rolename":"kiosk"}]},
  {"command":"addRoleACL","rolename":"admin","acltype":"publishClientSend","topic":"fleet/v1/#","allow":True},
  {"command":"addRoleACL","rolename":"admin","acltype":"subscribePattern","topic":"fleet/v1/#","allow":True},
  {"command":"addRoleACL","rolename":"admin","acltype":"publishClientReceive","topic":"fleet/v1/#","allow":True}, kicked=True)

a = cl("wx-a"); a.subscribe("fleet/v1/wx-a/cmd/#",1); time.sleep(0.2)
a.publish("fleet/v1/wx-a/telemetry", b"t",1); a.publish("fleet/v1/wx-a/events", b"e",1); time.sleep(0.3)
print("pattern %u/%c:", a.log)
cmd({"command":"createRole","rolename":"st-wx-a","acls":[{"acltype":"publishClientSend","topic":"fleet/v1/wx-a/telemetry","allow":True}]},
    {"command":"addClientRole","username":"wx-a","rolename":"st-wx-a"})
time.sleep(1); a = cl("wx-a"); a.publish("fleet/v1/wx-a/telemetry", b"t2",1); time.sleep(0.3); print("literal role:", a.log[-1])
t=time.time(); cmd({"command":"disableClient","username":"wx-a"})
print("after disable, connected?", a.log[-1]); a.publish("fleet/v1/wx-a/telemetry", b"t3",1); time.sleep(0.3); print("publish after disable:", a.log[-2:])
a.loop_stop(); a.disconnect(); time.sleep(0.2)
a2 = cl("wx-a"); a2.publish("fleet/v1/wx-a/telemetry", b"t4",1); time.sleep(0.3); print("reconnect after disable:", a2.log)
cmd({"command":"kickClient","username":"wx-a"}); time.sleep(0.3); print("after kick", a2.log[-1:])
cmd({"command":"deleteClient","username":"wx-a"})
a3 = cl("wx-a"); a3.publish("fleet/v1/wx-a/telemetry", b"t5",1); time.sleep(0.3); print("after delete:", a3.log)
print("ctl fleet got", [g for g in ctl.got if g[0].startswith("fleet")])
p.terminate(); p.wait(); print(open(d/"log").read()[-1500:])
